"""Approximate search: a faiss IVF index proposes the candidate files, whose every window
is then scored from the stored vectors (a true hit can be missed; recall@k against exact
search is what `python -m atjax.bench search --approximate` reports)."""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np

from atjax.search import exact
from atjax.search import store

log = logging.getLogger("atjax.search.approximate")


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


def approximate_top_files(snap: exact.Snapshot, ann: ApproximateIndex, q: np.ndarray,
                          k: int, nprobe: int) -> list[tuple[int, int, float]]:
    """Like exact.exact_top_files, but only files the IVF index proposes are considered.

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
        scores = exact.exact_scores(snap.rows, rows, q)
        files = {f for f, _, _ in exact.best_per_file(rows, scores, snap.row_file, k)}
        if len(files) >= k or m >= total:
            break
        m = min(4 * m, total)
    every = snap.rows_of(sorted(files))
    scores = exact.exact_scores(snap.rows, every, q)
    return exact.best_per_file(every, scores, snap.row_file, k)
