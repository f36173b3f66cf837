"""`python -m atjax.search INDEX "a dog barks then a car drives past" -k 10`: ranked files.

Each hit is a file with the start time of its best-matching window and that window's
score (cosine similarity of L2-normalised embeddings). `--audio FILE` queries by example.
The model is the one the index records; `--model` overrides it (it must embed like the
one that built the index).

Exact search reads the index's int8 codes (1 byte per dimension) and uses each row's error
bound to keep only the rows that could still reach the top k files; those are rescored
from the stored vectors, so the result is the same as scoring every stored vector
(verified by the tests and by `python -m atjax.bench search`). Above
APPROXIMATE_ABOVE_WINDOWS windows, or with --approximate, an IVF index (faiss) proposes
the candidate files instead; every window of those files is then scored from the stored
vectors, so a hit's time and score are its file's best, but a true hit can be missed
(recall@10 vs exact is reported by the benchmark). `--audio` needs the `data` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import sys
import threading

import numpy as np

from atjax import console
from atjax.search import approximate as approximate_lib
from atjax.search import cli
from atjax.search import codes as codes_lib
from atjax.search import exact
from atjax.search import store
from atjax.search import windows

log = logging.getLogger("atjax.search.query")

# Exact search takes time in proportion to the windows (about 20 ms per million 1024-d
# windows on 2 cores, docs/search.md); past a few million the approximate index answers
# faster.
APPROXIMATE_ABOVE_WINDOWS = 4_000_000
DEFAULT_NPROBE = 32
# Windows of a query example embedded per model call (its memory: this many windows).
QUERY_BATCH = 16


@dataclasses.dataclass(frozen=True)
class Hit:
    file_id: int
    path: str          # relative to the collection root
    abspath: str
    time: float        # start of the best-matching window (s)
    end: float         # its end, clipped to the file's duration (s)
    score: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class Searcher:
    """Answers queries over one index; follows the index as an indexer updates it.

    Thread-safe (queries are serialised: each one already uses every core).
    """

    def __init__(self, index: store.AudioIndex | str | os.PathLike, model=None, *,
                 approximate: bool | None = None, nprobe: int = DEFAULT_NPROBE):
        if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
            raise ValueError(f"nprobe (IVF cells visited) must be a positive integer, "
                             f"got {nprobe!r}")
        self._owns_index = not isinstance(index, store.AudioIndex)
        self.index = store.AudioIndex.open(index) if self._owns_index else index
        self.model = model
        self.approximate = approximate
        self.nprobe = nprobe
        self._lock = threading.RLock()
        self._checked: set[str] = set()
        self._snap: exact.Snapshot | None = None
        self._ann: approximate_lib.ApproximateIndex | None = None
        self.refresh()

    def close(self) -> None:
        if self._owns_index:
            self.index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def num_files(self) -> int:
        return self._snap.live_files

    @property
    def num_windows(self) -> int:
        return self._snap.live_rows

    def counts(self) -> tuple[int, int]:
        """(files, windows) the index holds now, re-read if a writer committed since."""
        with self._lock:
            self.refresh()
            return self._snap.live_files, self._snap.live_rows

    def refresh(self) -> None:
        """Re-reads the index if any writer committed since the last read."""
        with self._lock:
            version = self.index._db.execute("PRAGMA data_version").fetchone()[0]
            if self._snap is not None and self._snap.data_version == version:
                return
            rows, row_file = self.index.segments()
            scalars = np.asarray(rows.scalars)
            span_ids, span_first, span_count = exact.spans(row_file)
            self._snap = exact.Snapshot(
                data_version=version, rows=rows, row_file=row_file,
                dead=np.flatnonzero(row_file < 0),
                scale=np.ascontiguousarray(scalars[:, store.SCALE]),
                bound=np.ascontiguousarray(scalars[:, store.BOUND]),
                starts=np.ascontiguousarray(scalars[:, store.START]),
                live_rows=int(np.count_nonzero(row_file >= 0)),
                live_files=len(span_ids), span_ids=span_ids, span_first=span_first,
                span_count=span_count)
            if rows.count == 0:
                self._ann = None  # nothing to train on; an exact search of nothing is []
            elif self._use_approximate():
                if self._ann is None or self._ann.generation != rows.generation \
                        or self._ann.ann.ntotal < rows.count:
                    self._ann = approximate_lib.ApproximateIndex.update(self.index, rows)
            else:
                self._ann = None
                codes_lib.warm_up_for(rows.codes)

    def _use_approximate(self) -> bool:
        """Decided on each index change: asked for, or automatic above a size."""
        if self.approximate is not None:
            return self.approximate
        if self._snap.live_rows < APPROXIMATE_ABOVE_WINDOWS:
            return False
        try:
            approximate_lib.faiss_module()
        except RuntimeError:
            log.warning("%d windows: exact search (install faiss-cpu for faster approximate "
                        "search)", self._snap.live_rows)
            return False
        return True

    def _check(self, tower: str) -> None:
        if tower not in self._checked:
            self.index.check_model(self.model, towers=(tower,))
            self._checked.add(tower)

    def _need_model(self):
        if self.model is None:
            raise ValueError("this Searcher has no model: only search_embedding is available")

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Files ranked by how well their best window matches the text `query`."""
        self._need_model()
        if not isinstance(query, str) or not query.strip():
            raise ValueError("empty query")
        with self._lock:
            self._check("text")
            q = np.asarray(self.model.embed_text([query]), np.float32)
            return self.search_embedding(q[0], k)

    def search_audio(self, waveform: np.ndarray, sample_rate: int, k: int = 10) -> list[Hit]:
        """Query by example: the mean embedding of the example's windows."""
        self._need_model()
        wave = np.asarray(waveform, np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"the example must be a non-empty mono waveform, got {wave.shape}")
        return self._search_blocks([wave], sample_rate, k)

    def search_file(self, path: str | os.PathLike, k: int = 10) -> list[Hit]:
        """Query by an example file, decoded in blocks: memory does not grow with its
        duration (its windows are embedded QUERY_BATCH at a time and averaged)."""
        self._need_model()
        rate = int(self.model.sample_rate)
        return self._search_blocks(windows.audio_lib().stream(path, rate), rate, k)

    def _search_blocks(self, blocks, sample_rate: int, k: int) -> list[Hit]:
        """Query by the example that `blocks` (mono, at `sample_rate`) make up."""
        s = self.index.settings
        windower = windows.Windower(max(1, int(round(s.window_seconds * sample_rate))),
                                      max(1, int(round(s.hop_seconds * sample_rate))))
        with self._lock:
            self._check("audio")
            emb = self._mean_embedding((frame for _, frame in windower.frames(blocks)),
                                       sample_rate)
            norm = np.linalg.norm(emb)
            return self.search_embedding(emb / norm if norm > 0 else emb, k)

    def _mean_embedding(self, frames, sample_rate: int) -> np.ndarray:
        """The mean of the model's embeddings of `frames` (at least one), QUERY_BATCH a call."""
        total, count = np.zeros(self.index.settings.dim, np.float64), 0
        frames = iter(frames)
        while batch := list(itertools.islice(frames, QUERY_BATCH)):
            out = np.asarray(self.model.embed_audio(np.stack(batch), sample_rate), np.float32)
            total += out.sum(0, dtype=np.float64)
            count += len(batch)
        return (total / count).astype(np.float32)

    def search_embedding(self, embedding: np.ndarray, k: int = 10, *,
                         stats: dict | None = None) -> list[Hit]:
        """Files ranked by their best window's score against `embedding` [dim]."""
        q = np.asarray(embedding, np.float32)
        if q.shape != (self.index.settings.dim,) or not np.all(np.isfinite(q)):
            raise ValueError(f"query embedding must be finite with shape "
                             f"({self.index.settings.dim},), got {q.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        with self._lock:
            self.refresh()
            snap = self._snap
            if self._ann is not None:
                top = approximate_lib.approximate_top_files(snap, self._ann, q, int(k),
                                                            self.nprobe)
            else:
                top = exact.exact_top_files(snap, q, int(k), stats)
            entries = self.index.get_files(f for f, _, _ in top)
        hits = []
        for file_id, row, score in top:
            entry = entries.get(file_id)
            if entry is None:  # deleted after this snapshot was read
                continue
            start = float(snap.starts[row])
            end = start + self.index.settings.window_seconds
            if entry.duration is not None:
                end = min(end, max(entry.duration, start))
            hits.append(Hit(file_id, entry.path, str(self.index.resolve(entry)), start, end,
                            score))
        return hits

    def file_entry(self, file_id: int) -> store.FileEntry | None:
        """The index's record of file `file_id`, if it holds one."""
        with self._lock:  # one SQLite connection, shared by the server's threads
            return self.index.get_file(file_id)


# -- command line -------------------------------------------------------------------------

def format_time(seconds: float) -> str:
    """m:ss.s, rounded once (59.96 s is 1:00.0, not 0:60.0)."""
    minutes, tenths = divmod(int(round(seconds * 10)), 600)
    return f"{minutes}:{tenths / 10:04.1f}"


def format_table(hits: list[Hit]) -> str:
    lines = [f"{'rank':>4}  {'score':>6}  {'time':>8}  file"]
    for rank, h in enumerate(hits, 1):
        lines.append(f"{rank:>4}  {h.score:6.3f}  {format_time(h.time):>8}  {h.path}")
    return "\n".join(lines)


def open_searcher(index_dir: str, model_arg: str | None, *, approximate=None,
                  nprobe: int = DEFAULT_NPROBE) -> Searcher:
    """A Searcher with the model the index records (or `model_arg`), loaded by atjax.load."""
    import atjax

    searcher = Searcher(index_dir, approximate=approximate, nprobe=nprobe)
    try:
        bundle = model_arg or searcher.index.model_record.get("bundle")
        if bundle is None:
            raise store.AudioIndexError(f"{index_dir} records no model bundle; pass --model")
        searcher.model = atjax.load(bundle)
    except BaseException:
        searcher.close()
        raise
    return searcher


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="index folder built by python -m atjax.index")
    parser.add_argument("query", nargs="?", help="what to look for, in words")
    parser.add_argument("--audio", help="query by example: an audio file")
    parser.add_argument("-k", type=cli.positive_int, default=10,
                        help="number of files (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--model", help="bundle to embed the query with (default: the one "
                        "the index records)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--approximate", dest="approximate", action="store_true", default=None,
                      help="use the approximate (IVF) index")
    mode.add_argument("--exact", dest="approximate", action="store_false",
                      help="always search exactly")
    parser.add_argument("--nprobe", type=cli.positive_int, default=DEFAULT_NPROBE,
                        help="IVF cells visited by an approximate search (default "
                             f"{DEFAULT_NPROBE})")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if (args.query is None) == (args.audio is None):
        parser.error("give either a text query or --audio FILE")
    console.setup(args.verbose, level=logging.WARNING)
    try:
        with open_searcher(args.index, args.model, approximate=args.approximate,
                           nprobe=args.nprobe) as searcher:
            if args.audio is not None:
                hits = searcher.search_file(args.audio, args.k)
            else:
                hits = searcher.search(args.query, args.k)
    except cli.CLI_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"query": args.query, "audio": args.audio, "k": args.k,
                          "results": [h.to_json() for h in hits]}, indent=2))
    else:
        print(format_table(hits) if hits else "no results (the index is empty)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
