"""Language-based search over a collection of audio files: the index, its queries, its page.

  store.py        the on-disk index: SQLite metadata plus memory-mapped embedding arrays
  database.py     the index's SQLite connections and transactions
  fingerprint.py  the identity of the model that filled an index
  codes.py        int8 codes of the stored embeddings and the score bounds they give
  windows.py      decoding audio and cutting it into the index's windows
  indexer.py      building and updating an index (python -m atjax.index)
  exact.py        exact search: the top files by their best window
  approximate.py  approximate search: a faiss IVF index proposes the files
  query.py        Searcher: text and audio queries over an index (python -m atjax.search)
  server.py       the HTTP server and its page (python -m atjax.serve), playing a file
                  only while it is the one that was indexed
  cli.py          what the three commands share
  errors.py       what the modules raise for an unusable index
"""
