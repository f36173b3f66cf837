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
import functools
import itertools
import json
import logging
import os
import pathlib
import sys
import threading

import numpy as np

from atjax import audio_index as store
from atjax import index as index_lib
from atjax import indexed_file

log = logging.getLogger("atjax.search")

# Exact search costs about 20 ms per million 1024-d windows on 2 cores (see the README);
# past a few million the approximate index answers faster.
APPROXIMATE_ABOVE_WINDOWS = 4_000_000
DEFAULT_NPROBE = 32
# Below this many code elements numpy beats paying numba's compile time.
_NUMBA_MIN_ELEMENTS = 1 << 24
_SCAN_LOCK = threading.Lock()  # numba's default thread pool must not be entered twice
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


# -- exact scoring ------------------------------------------------------------------------

@functools.cache
def _numba_kernel():
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(parallel=True, fastmath=True, nogil=True, cache=False)
    def int8_bounds(codes, q, scale, slack, lower, upper):
        n, d = codes.shape
        for i in numba.prange(n):
            acc = np.float32(0.0)
            for j in range(d):
                acc += np.float32(codes[i, j]) * q[j]
            approx = acc * scale[i]
            lower[i] = approx - slack[i]
            upper[i] = approx + slack[i]

    return int8_bounds


def _warm_up() -> None:
    """Compiles the numba kernel now (~1 s) rather than in the first query."""
    kernel = _numba_kernel()
    if kernel is not None:
        one = np.ones(1, np.float32)
        with _SCAN_LOCK:
            kernel(np.zeros((1, 1), np.int8), one, one, one, np.empty(1, np.float32),
                   np.empty(1, np.float32))


def int8_bounds(codes: np.ndarray, scale: np.ndarray, bound: np.ndarray,
                q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds [n] on the stored rows' scores against q [d].

    approx = scale * (codes @ q); the true score lies within bound * |q| of it.

    numpy has no int8 BLAS, and casting chunks to float32 for sgemv spends most of its
    ~105 ms per 1M x 1024 in the cast. A fused numba loop reads the codes once (~16 ms on
    2 idle cores), so it is used when numba is installed and the index is big. Otherwise
    einsum casts in small buffers on one thread: OpenBLAS' threaded sgemv was seen to be
    8x slower than one thread on cores shared with other work.
    """
    n, _ = codes.shape
    q = np.ascontiguousarray(q, np.float32)
    slack = bound * np.float32(np.linalg.norm(q))
    lower, upper = np.empty(n, np.float32), np.empty(n, np.float32)
    kernel = _numba_kernel() if codes.size >= _NUMBA_MIN_ELEMENTS else None
    if kernel is not None:
        with _SCAN_LOCK:
            kernel(np.asarray(codes), q, scale, slack, lower, upper)
        return lower, upper
    approx = np.empty(n, np.float32)
    if n:
        np.einsum("ij,j->i", codes, q, dtype=np.float32, casting="unsafe", out=approx)
    approx *= scale
    np.subtract(approx, slack, out=lower)
    np.add(approx, slack, out=upper)
    return lower, upper


def exact_scores(rows: store.Rows, which: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Scores of record: the stored vectors (float16/32) of rows `which`, in float32."""
    out = np.empty(len(which), np.float32)
    for lo in range(0, len(which), 1 << 16):
        part = which[lo:lo + (1 << 16)]
        np.einsum("ij,j->i", rows.read_vectors(part), q, dtype=np.float32, casting="unsafe",
                  out=out[lo:lo + len(part)])
    return out


def best_per_file(rows: np.ndarray, scores: np.ndarray, row_file: np.ndarray,
                  k: int) -> list[tuple[int, int, float]]:
    """Top-k files by their best row: [(file_id, row, score)], ties to the earlier window."""
    live = row_file[rows] >= 0
    rows, scores = rows[live], scores[live]
    order = np.lexsort((rows, -scores))
    files = row_file[rows[order]]
    _, first = np.unique(files, return_index=True)
    best = order[first]
    best = best[np.lexsort((row_file[rows[best]], -scores[best]))][:k]
    return [(int(row_file[rows[i]]), int(rows[i]), float(scores[i])) for i in best]


def _kth_file_lower_bound(lower: np.ndarray, row_file: np.ndarray, k: int) -> float:
    """A value <= the k-th largest over files of max(lower bound of the file's rows).

    Found from the top rows by lower bound; only if they span fewer than k files is the
    net widened. Files seen through a subset of their rows can only look worse, so the
    value never overshoots.
    """
    n = len(lower)
    m = min(n, max(4 * k, 64))
    while True:
        top = np.argpartition(lower, n - m)[n - m:] if m < n else np.arange(n)
        top = top[np.isfinite(lower[top])]
        order = top[np.argsort(-lower[top], kind="stable")]
        _, first = np.unique(row_file[order], return_index=True)
        per_file = lower[order[first]]
        if len(per_file) >= k:
            return float(np.sort(per_file)[-k])
        if m == n:
            return -np.inf
        m = min(n, 4 * m)


@dataclasses.dataclass
class _Snapshot:
    """What a search needs from the index, read once per index change."""
    data_version: int
    rows: store.Rows
    row_file: np.ndarray   # [count] owning file id, -1 for dead rows
    dead: np.ndarray       # indices of dead rows
    scale: np.ndarray      # [count] float32, in RAM (the scalars file is [count, 3])
    bound: np.ndarray
    starts: np.ndarray
    live_rows: int
    live_files: int
    # Each live file's rows are one run: ids (sorted), its first row and its row count.
    span_ids: np.ndarray
    span_first: np.ndarray
    span_count: np.ndarray

    def rows_of(self, file_ids) -> np.ndarray:
        """Every row of the given (live) files, file after file."""
        at = np.searchsorted(self.span_ids, np.asarray(file_ids, np.int64))
        first, count = self.span_first[at], self.span_count[at]
        return np.repeat(first - np.cumsum(count) + count, count) + np.arange(count.sum())


def _spans(row_file: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    live = np.flatnonzero(row_file >= 0)
    ids, first, count = np.unique(row_file[live], return_index=True, return_counts=True)
    return ids, live[first], count


def exact_top_files(snap: _Snapshot, q: np.ndarray, k: int,
                    stats: dict | None = None) -> list[tuple[int, int, float]]:
    """The k files whose best window scores highest against q, scored exactly.

    `stats`, if given, receives the number of rows rescored ("candidates").
    """
    if snap.live_rows == 0:
        return []
    q = np.asarray(q, np.float32)
    lower, upper = int8_bounds(snap.rows.codes, snap.scale, snap.bound, q)
    lower[snap.dead] = -np.inf
    upper[snap.dead] = -np.inf
    threshold = _kth_file_lower_bound(lower, snap.row_file, k)
    candidates = np.flatnonzero(upper >= threshold)
    if stats is not None:
        stats["candidates"] = len(candidates)
    scores = exact_scores(snap.rows, candidates, q)
    return best_per_file(candidates, scores, snap.row_file, k)


# -- approximate index --------------------------------------------------------------------

def faiss_module():
    """faiss, or a RuntimeError that says how to install it."""
    try:
        import faiss
    except ImportError as e:
        raise RuntimeError("approximate search needs faiss (pip install faiss-cpu, or the "
                           "search extra: pip install \"atjax[search]\")") from e
    return faiss


class ApproximateIndex:
    """A faiss IVF index (inverted lists over k-means cells, 8-bit scalar-quantised rows).

    It holds rows 0..ntotal-1 of one generation of the arrays, so the row number is the id,
    and is saved next to them as ann-GGGGGG.faiss. Rows appended since are added on the
    next update; a compaction (new generation) makes it be rebuilt.
    """

    def __init__(self, ann, generation: int):
        self.ann = ann
        self.generation = generation

    @staticmethod
    def path(index: store.AudioIndex, generation: int) -> pathlib.Path:
        return index.path / f"ann-{generation:06d}.faiss"

    @classmethod
    def update(cls, index: store.AudioIndex, rows: store.Rows | None = None, *,
               seed: int = 0) -> "ApproximateIndex":
        faiss = faiss_module()
        rows = rows if rows is not None else index.segments()[0]
        if rows.count == 0:
            raise store.AudioIndexError(f"{index.path} holds no windows: there is nothing "
                                        "to build an approximate index from")
        path = cls.path(index, rows.generation)
        ann = None
        if path.exists():
            ann = faiss.read_index(str(path))
            if ann.ntotal > rows.count or ann.d != rows.vectors.shape[1]:
                ann = None  # not built over these arrays
        if ann is None:
            ann = cls._train(faiss, rows, seed)
        if ann.ntotal < rows.count:
            log.info("approximate index: adding %d windows", rows.count - ann.ntotal)
            for lo in range(ann.ntotal, rows.count, 1 << 16):
                hi = min(rows.count, lo + (1 << 16))
                ann.add(np.ascontiguousarray(rows.vectors[lo:hi], np.float32))
            cls._save(faiss, ann, path)
        return cls(ann, rows.generation)

    @staticmethod
    def _save(faiss, ann, path: pathlib.Path) -> None:
        """Saves `ann` for the next searcher; without it (a read-only index folder, or a
        writer that cleaned up the temp file) this searcher still has it in memory."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(ann, str(tmp))
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # faiss reports a failed write as RuntimeError
            log.warning("could not save %s (%s): it is rebuilt by the next searcher", path, e)

    @staticmethod
    def _train(faiss, rows: store.Rows, seed: int):
        n, d = rows.vectors.shape
        # ~sqrt(n) cells: the scan per query and the cost of assigning a row both stay
        # O(sqrt(n)); 40 training points per cell is what faiss' k-means asks for.
        nlist = int(np.clip(round(np.sqrt(n)), 1, 65536))
        sample = np.sort(np.random.default_rng(seed).choice(n, min(n, 40 * nlist),
                                                            replace=False))
        ann = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        log.info("approximate index: training %d cells on %d windows", nlist, len(sample))
        ann.train(np.ascontiguousarray(rows.vectors[sample], np.float32))
        return ann

    def candidates(self, q: np.ndarray, m: int, nprobe: int) -> np.ndarray:
        faiss = faiss_module()
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        _, ids = self.ann.search(np.asarray(q, np.float32)[None], int(m), params=params)
        return ids[0][ids[0] >= 0]


def approximate_top_files(snap: _Snapshot, ann: ApproximateIndex, q: np.ndarray, k: int,
                          nprobe: int) -> list[tuple[int, int, float]]:
    """Like exact_top_files, but only files the IVF index proposes are considered.

    The proposed windows pick the files; then every window of those files is scored, so
    each hit's window and score are its file's best (a proposal can miss a file's best
    window while finding a lesser one).
    """
    q = np.asarray(q, np.float32)
    total = int(ann.ann.ntotal)
    if total == 0 or snap.live_rows == 0:
        return []
    m = min(8 * k, total)  # faiss allocates m results: k can be anything
    while True:
        rows = ann.candidates(q, m, nprobe)
        rows = rows[snap.row_file[rows] >= 0]
        files = {f for f, _, _ in best_per_file(rows, exact_scores(snap.rows, rows, q),
                                                snap.row_file, k)}
        if len(files) >= k or m >= total:
            break
        m = min(4 * m, total)
    every = snap.rows_of(sorted(files))
    return best_per_file(every, exact_scores(snap.rows, every, q), snap.row_file, k)


# -- the searcher -------------------------------------------------------------------------

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
        self._snap: _Snapshot | None = None
        self._ann: ApproximateIndex | None = None
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
            span_ids, span_first, span_count = _spans(row_file)
            self._snap = _Snapshot(
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
                    self._ann = ApproximateIndex.update(self.index, rows)
            else:
                self._ann = None
                if rows.codes.size >= _NUMBA_MIN_ELEMENTS:
                    _warm_up()

    def _use_approximate(self) -> bool:
        """Decided on each index change: asked for, or automatic above a size."""
        if self.approximate is not None:
            return self.approximate
        if self._snap.live_rows < APPROXIMATE_ABOVE_WINDOWS:
            return False
        try:
            faiss_module()
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
        return self._search_blocks(index_lib.audio_lib().stream(path, rate), rate, k)

    def _search_blocks(self, blocks, sample_rate: int, k: int) -> list[Hit]:
        """Query by the example that `blocks` (mono, at `sample_rate`) make up."""
        s = self.index.settings
        windower = index_lib.Windower(max(1, int(round(s.window_seconds * sample_rate))),
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
                top = approximate_top_files(snap, self._ann, q, int(k), self.nprobe)
            else:
                top = exact_top_files(snap, q, int(k), stats)
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

    def audio_path(self, file_id: int) -> pathlib.Path | None:
        """The real path of the file behind an id, if `open_audio` would hand it out."""
        try:
            audio = self.open_audio(file_id)
        except indexed_file.AudioRefused:
            return None
        audio.file.close()
        return audio.real_path

    def open_audio(self, file_id: int) -> indexed_file.AudioFile:
        """The file behind an id, opened while it is the one indexed (atjax.indexed_file)."""
        with self._lock:  # one SQLite connection, shared by the server's threads
            entry = self.index.get_file(file_id)
        if entry is None or entry.error is not None:
            raise indexed_file.AudioRefused("missing", "not found")
        return indexed_file.open_indexed(self.index.settings.root, self.index.resolve(entry),
                                         size=entry.size, mtime_ns=entry.mtime_ns,
                                         name=entry.path.rsplit("/", 1)[-1])


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
    parser.add_argument("-k", type=index_lib.positive_int, default=10,
                        help="number of files (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--model", help="bundle to embed the query with (default: the one "
                        "the index records)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--approximate", dest="approximate", action="store_true", default=None,
                      help="use the approximate (IVF) index")
    mode.add_argument("--exact", dest="approximate", action="store_false",
                      help="always search exactly")
    parser.add_argument("--nprobe", type=index_lib.positive_int, default=DEFAULT_NPROBE,
                        help="IVF cells visited by an approximate search (default "
                             f"{DEFAULT_NPROBE})")
    args = parser.parse_args(argv)
    if (args.query is None) == (args.audio is None):
        parser.error("give either a text query or --audio FILE")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        with open_searcher(args.index, args.model, approximate=args.approximate,
                           nprobe=args.nprobe) as searcher:
            if args.audio is not None:
                hits = searcher.search_file(args.audio, args.k)
            else:
                hits = searcher.search(args.query, args.k)
    except index_lib.CLI_ERRORS as e:
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
