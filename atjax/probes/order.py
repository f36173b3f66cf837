"""Event-order probes as functions of embeddings (numpy only): BAT (Fig. 3), the twin test,
the order-blind BAT, R@1 of original vs clause-swapped queries (PTe, Fig. 2) and bootstrap
confidence intervals for all of them.

Items that share material are not independent: a pair and its reversed twin are the same
two sounds, so the intervals resample whole groups (`groups`: a pair with its twin) where
a probe holds both.

Scores are per item, so every figure can carry a confidence interval from the same numbers:
1 when the probe prefers the right side, 0 when it prefers the wrong one, 1/2 on a tie. Ties
counting half is what makes a blind model score exactly 50%: an order-blind audio encoder
gives a clip and its reversed twin the same embedding, so every twin comparison ties.
Similarities within `tie_tolerance` of each other are ties, so that equal embeddings computed
in different batches (float noise of order 1e-7) still tie.

The two controls exist because BAT alone can mislead: the text side alone can prefer the
original sentence (e.g. "after" captions differ from "before" captions in a way any audio
embedding picks up), so even an untrained model can score near 100% on BAT, and as much on
its order-blind control (docs/data_pipeline.md). So:
  - twin test: is a pair caption closer to its own clip than to the reversed-order twin?
    It needs both sides: exactly 50% when the audio side is order-blind, and also when the
    text side is (a caption and its twin caption embedding alike score 1 + 0 or 0 + 1 on
    the two twins, whatever the audio does). So 50% does not show the audio order-blind;
    the audio side alone is measured by the twin audio cosine: the cosine of a clip's
    embedding with its reversed twin's (1 for an order-blind audio encoder).
  - order-blind BAT: BAT with each clip's embedding replaced by the mean of the clip's and
    its twin's: what the text side alone contributes. BAT means something only above it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from atjax import metrics

DEFAULT_TIE_TOLERANCE = 1e-6


def normalize(x) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64, so that comparisons are not float32 noise)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(norm)):
        raise ValueError("embeddings hold a zero or non-finite row")
    return x / norm


def cosine_rows(a, b) -> np.ndarray:
    """Cosine similarity of row i of `a` with row i of `b`."""
    a, b = normalize(a), normalize(b)
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {a.shape} vs {b.shape}")
    return np.sum(a * b, axis=1)


def preference_scores(anchor, preferred, other, *,
                      tie_tolerance: float = DEFAULT_TIE_TOLERANCE) -> np.ndarray:
    """Per row: 1 if `anchor` is closer (cosine) to `preferred` than to `other`, 0 if
    farther, 0.5 if within `tie_tolerance`."""
    diff = cosine_rows(anchor, preferred) - cosine_rows(anchor, other)
    return np.where(np.abs(diff) <= tie_tolerance, 0.5, (diff > 0).astype(np.float64))


def bat_scores(audio, original_text, swapped_text, **kw) -> np.ndarray:
    """BAT per sentence: the original sentence is closer to its clip than the sentence with
    before<->after exchanged."""
    return preference_scores(audio, original_text, swapped_text, **kw)


def twin_scores(text, audio, twin_audio, **kw) -> np.ndarray:
    """Twin test per caption: closer to its own clip than to the reversed-order twin."""
    return preference_scores(text, audio, twin_audio, **kw)


def twin_audio_cosines(audio, twin_audio) -> np.ndarray:
    """Per pair: the cosine of a clip's embedding with its reversed-order twin's: 1 for an
    order-blind audio encoder, lower the more the audio side tells the orders apart."""
    return cosine_rows(audio, twin_audio)


def order_blind(audio, twin_audio) -> np.ndarray:
    """Each clip's embedding replaced by the mean of its and its twin's (normalised)."""
    return normalize(normalize(audio) + normalize(twin_audio))


def order_blind_bat_scores(audio, twin_audio, original_text, swapped_text, **kw) -> np.ndarray:
    return bat_scores(order_blind(audio, twin_audio), original_text, swapped_text, **kw)


def recall_at_1_scores(text, audio, relevant) -> np.ndarray:
    """Per query: whether the top clip is a correct one (pessimistic ties, atjax.metrics)."""
    similarity = normalize(text) @ normalize(audio).T
    return metrics.hits_at_k(similarity, relevant, 1)


def bootstrap_ci(scores, *, groups=None, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item scores.

    `groups` (one label per item) resamples whole groups instead of items (a cluster
    bootstrap): items of a group are correlated (a pair and its twin), and resampling them
    one by one would misstate the interval. The mean is then over the items drawn."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"need a non-empty 1-D array of scores, got shape {scores.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if groups is None:
        sums, counts = scores, np.ones_like(scores)
    else:
        groups = np.asarray(groups)
        if groups.shape != scores.shape:
            raise ValueError(f"groups has shape {groups.shape}, scores {scores.shape}")
        _, label = np.unique(groups, return_inverse=True)
        sums = np.bincount(label, weights=scores)
        counts = np.bincount(label).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    # Resample in blocks to bound memory for large sets.
    block = max(1, 2_000_000 // sums.size)
    for start in range(0, resamples, block):
        n = min(block, resamples - start)
        idx = rng.integers(0, sums.size, size=(n, sums.size))
        means[start:start + n] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def summarize(name: str, scores, *, groups=None, resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, float]:
    """{name: mean, name_ci_low, name_ci_high, name_count} for per-item scores."""
    scores = np.asarray(scores, np.float64)
    low, high = bootstrap_ci(scores, groups=groups, resamples=resamples, seed=seed, level=level)
    return {name: float(scores.mean()), f"{name}_ci_low": low, f"{name}_ci_high": high,
            f"{name}_count": int(scores.size)}


def summarize_difference(name: str, first, second, *, groups=None, resamples: int = 1000,
                         seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of `first - second` over paired items (same queries) with its paired interval."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape:
        raise ValueError(f"paired scores differ in shape: {first.shape} vs {second.shape}")
    return summarize(name, first - second, groups=groups, resamples=resamples, seed=seed,
                     level=level)


def balanced_indices(groups: Sequence[str], *, seed: int = 0,
                     size: int | None = None) -> np.ndarray:
    """Indices of an equal number of items from each group (the smallest group's size, or
    `size` if smaller), drawn without replacement by a seeded generator and returned
    sorted: the balanced before/after set of BAT (the paper: 88 + 88)."""
    groups = np.asarray(list(groups))
    names = sorted(set(groups.tolist()))
    if not names:
        return np.zeros(0, np.int64)
    members = [np.flatnonzero(groups == g) for g in names]
    size = min([len(m) for m in members] + ([size] if size else []))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(m, size=size, replace=False) for m in members]
    return np.sort(np.concatenate(chosen))
