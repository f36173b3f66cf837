"""Evaluation metrics: retrieval R@k and mAP@k, and classification macro F1 and accuracy.

Retrieval works on a `[queries, items]` similarity matrix.
`relevant` is a boolean matrix of the same shape marking each query's correct items. In
text-to-audio retrieval every caption is a query with one correct clip (AudioCaps' five
captions of a clip share it); in audio-to-text retrieval a clip has several correct captions.

Tie rule (pessimistic): items with equal similarity are ranked with the incorrect ones first,
then by item index. A model that cannot separate a correct item from an incorrect one gets no
credit for it, so a constant embedding scores R@k = 0 (for k below the number of items)
instead of whatever the order of the files on disk would give it. Scores are compared
exactly; nothing is rounded.

AP@k follows DCASE 2022 task 6B: (1 / min(number correct, k)) times the sum, over the ranks
i <= k that hold a correct item, of precision@i. With one correct item it is 1/rank when the
rank is at most k, else 0.
"""

from __future__ import annotations

import numpy as np

# Queries ranked per block: bounds the memory of the sort (a few [block, items] arrays).
_BLOCK = 1024


def check_k(k, name: str = "k") -> int:
    """`k` as an int; raises ValueError naming `name` unless it is a positive integer (a
    cutoff of 0 or below has no top ranks to score)."""
    try:
        ok = not isinstance(k, (bool, str)) and int(k) == k and k >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _check(similarity, relevant, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    similarity = np.asarray(similarity)
    relevant = np.asarray(relevant)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be [queries, items], got shape {similarity.shape}")
    if relevant.shape != similarity.shape:
        raise ValueError(f"relevant has shape {relevant.shape}, similarity {similarity.shape}")
    if relevant.dtype != bool:
        raise ValueError(f"relevant must be a boolean matrix, got dtype {relevant.dtype}")
    k = check_k(k)
    if similarity.shape[0] == 0:
        raise ValueError("no queries")
    if not np.all(np.isfinite(similarity)):
        bad = np.flatnonzero(~np.isfinite(similarity).all(axis=1))
        raise ValueError(f"similarity holds non-finite values (queries {bad[:10].tolist()})")
    empty = np.flatnonzero(~relevant.any(axis=1))
    if empty.size:
        raise ValueError(f"{empty.size} queries have no relevant item "
                         f"(first: {empty[:10].tolist()})")
    return similarity.astype(np.float64), relevant, int(k)


def ranked_relevance(similarity, relevant, k: int) -> np.ndarray:
    """`[queries, min(k, items)]` booleans: whether the item at each of the top k ranks
    (pessimistic tie rule, see the module docstring) is a correct one."""
    similarity, relevant, k = _check(similarity, relevant, k)
    queries, items = similarity.shape
    top = min(k, items)
    index = np.broadcast_to(np.arange(items), (min(_BLOCK, queries), items))
    out = np.empty((queries, top), bool)
    for start in range(0, queries, _BLOCK):
        sim = similarity[start:start + _BLOCK]
        rel = relevant[start:start + _BLOCK]
        # lexsort sorts by the last key first: descending score, then incorrect (False)
        # before correct, then item index.
        order = np.lexsort((index[:sim.shape[0]], rel, -sim), axis=-1)[:, :top]
        out[start:start + sim.shape[0]] = np.take_along_axis(rel, order, axis=1)
    return out


def _ap_from_ranked(ranked: np.ndarray, num_correct: np.ndarray, k: int) -> np.ndarray:
    ranked = ranked[:, :k]
    precision = np.cumsum(ranked, axis=1) / np.arange(1, ranked.shape[1] + 1)
    return (precision * ranked).sum(axis=1) / np.minimum(num_correct, k)


def hits_at_k(similarity, relevant, k: int) -> np.ndarray:
    """Per query: whether any correct item is among the top k (float 0/1, `[queries]`)."""
    return ranked_relevance(similarity, relevant, k).any(axis=1).astype(np.float64)


def average_precision_at_k(similarity, relevant, k: int) -> np.ndarray:
    """Per query AP@k (`[queries]`), as defined in the module docstring."""
    ranked = ranked_relevance(similarity, relevant, k)
    return _ap_from_ranked(ranked, np.asarray(relevant).sum(axis=1), k)


def recall_at_k(similarity, relevant, k: int) -> float:
    """R@k: the share of queries with a correct item among their top k."""
    return float(hits_at_k(similarity, relevant, k).mean())


def mean_average_precision_at_k(similarity, relevant, k: int) -> float:
    """mAP@k: AP@k averaged over queries."""
    return float(average_precision_at_k(similarity, relevant, k).mean())


def retrieval_summary(similarity, relevant, ks=(1, 5, 10), map_k: int = 10) -> dict[str, float]:
    """{"R@k": ..., "mAP@map_k": ...} from one ranking (the same numbers as recall_at_k and
    mean_average_precision_at_k, which would each sort again)."""
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one R@k cutoff")
    try:
        ks = tuple(check_k(k) for k in ks)
    except ValueError:
        raise ValueError(f"ks must hold positive integers, got {ks!r}") from None
    map_k = check_k(map_k, "map_k")
    ranked = ranked_relevance(similarity, relevant, max(ks + (map_k,)))
    out = {f"R@{k}": float(ranked[:, :k].any(axis=1).mean()) for k in ks}
    ap = _ap_from_ranked(ranked, np.asarray(relevant).sum(axis=1), map_k)
    out[f"mAP@{map_k}"] = float(ap.mean())
    return out


def _labels(true, pred) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(true), np.asarray(pred)
    if true.ndim != 1 or true.shape != pred.shape:
        raise ValueError(f"true and predicted labels must be 1-D of one length, got "
                         f"{true.shape} and {pred.shape}")
    if true.size == 0:
        raise ValueError("no labels")
    return true, pred


def accuracy(true, pred) -> float:
    true, pred = _labels(true, pred)
    return float(np.mean(true == pred))


def macro_f1(true, pred) -> float:
    """F1 averaged over the classes that occur in `true` or `pred` (scikit-learn's default
    label set). A class never predicted scores 0, not undefined."""
    true, pred = _labels(true, pred)
    scores = []
    for label in np.union1d(true, pred):
        tp = np.sum((true == label) & (pred == label))
        fp = np.sum((true != label) & (pred == label))
        fn = np.sum((true == label) & (pred != label))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))
