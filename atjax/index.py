"""`python -m atjax.index AUDIO_DIR --model BUNDLE --out INDEX`: embeds a folder of audio
into a search index (atjax.search.indexer)."""

import sys

from atjax.search import indexer

if __name__ == "__main__":
    sys.exit(indexer.main())
