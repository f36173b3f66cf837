"""Exact search: the k files whose best window scores highest, as scoring every stored
vector would find them, from a scan of the int8 codes and a rescoring of the few rows
their bounds cannot rule out."""

from __future__ import annotations

import dataclasses

import numpy as np

from atjax.search import codes as codes_lib
from atjax.search import store


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
class Snapshot:
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


def spans(row_file: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    live = np.flatnonzero(row_file >= 0)
    ids, first, count = np.unique(row_file[live], return_index=True, return_counts=True)
    return ids, live[first], count


def exact_top_files(snap: Snapshot, q: np.ndarray, k: int,
                    stats: dict | None = None) -> list[tuple[int, int, float]]:
    """The k files whose best window scores highest against q, scored exactly.

    `stats`, if given, receives the number of rows rescored ("candidates").
    """
    if snap.live_rows == 0:
        return []
    q = np.asarray(q, np.float32)
    lower, upper = codes_lib.int8_bounds(snap.rows.codes, snap.scale, snap.bound, q)
    lower[snap.dead] = -np.inf
    upper[snap.dead] = -np.inf
    threshold = _kth_file_lower_bound(lower, snap.row_file, k)
    candidates = np.flatnonzero(upper >= threshold)
    if stats is not None:
        stats["candidates"] = len(candidates)
    scores = exact_scores(snap.rows, candidates, q)
    return best_per_file(candidates, scores, snap.row_file, k)
