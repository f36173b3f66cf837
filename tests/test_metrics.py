"""atjax.metrics against a brute-force ranking written with plain Python sorts."""

import numpy as np
import pytest

from atjax import metrics


def _brute_ranks(sim_row, rel_row):
    """Item order of one query under the documented pessimistic tie rule."""
    return sorted(range(len(sim_row)), key=lambda i: (-sim_row[i], bool(rel_row[i]), i))


def _brute_recall(sim, rel, k):
    hits = []
    for s, r in zip(sim, rel):
        order = _brute_ranks(s, r)
        hits.append(any(r[i] for i in order[:k]))
    return float(np.mean(hits))


def _brute_map(sim, rel, k):
    aps = []
    for s, r in zip(sim, rel):
        order = _brute_ranks(s, r)
        found, total = 0, 0.0
        for rank, item in enumerate(order[:k], start=1):
            if r[item]:
                found += 1
                total += found / rank
        aps.append(total / min(int(np.sum(r)), k))
    return float(np.mean(aps))


def _random_case(rng, queries, items, levels):
    # Few distinct score levels -> many ties; several relevant items per query.
    sim = rng.integers(0, levels, size=(queries, items)).astype(np.float32) / levels
    rel = rng.random((queries, items)) < 0.2
    rel[np.arange(queries), rng.integers(0, items, queries)] = True
    return sim, rel


@pytest.mark.parametrize("seed,levels", [(0, 3), (1, 5), (2, 1000)])
@pytest.mark.parametrize("k", [1, 5, 10, 40])
def test_against_brute_force(seed, levels, k):
    rng = np.random.default_rng(seed)
    sim, rel = _random_case(rng, queries=37, items=23, levels=levels)
    assert metrics.recall_at_k(sim, rel, k) == pytest.approx(_brute_recall(sim, rel, k))
    assert metrics.mean_average_precision_at_k(sim, rel, k) == pytest.approx(
        _brute_map(sim, rel, k))


def test_summary_equals_the_single_metrics():
    rng = np.random.default_rng(4)
    sim, rel = _random_case(rng, queries=30, items=17, levels=6)
    summary = metrics.retrieval_summary(sim, rel, ks=(1, 5, 10), map_k=10)
    assert summary == {"R@1": metrics.recall_at_k(sim, rel, 1),
                       "R@5": metrics.recall_at_k(sim, rel, 5),
                       "R@10": metrics.recall_at_k(sim, rel, 10),
                       "mAP@10": metrics.mean_average_precision_at_k(sim, rel, 10)}
    assert metrics.retrieval_summary(sim, rel, ks=(3,), map_k=2)["mAP@2"] == pytest.approx(
        _brute_map(sim, rel, 2))


def test_blocks_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(3)
    sim, rel = _random_case(rng, queries=50, items=11, levels=4)
    whole = metrics.average_precision_at_k(sim, rel, 5)
    monkeypatch.setattr(metrics, "_BLOCK", 7)
    np.testing.assert_allclose(metrics.average_precision_at_k(sim, rel, 5), whole)
    assert metrics.recall_at_k(sim, rel, 3) == pytest.approx(_brute_recall(sim, rel, 3))


def test_single_correct_item_is_reciprocal_rank():
    # One correct item per query at ranks 1, 3, 11 (no ties): AP@10 = 1, 1/3, 0.
    sim = np.array([np.linspace(1, 0, 12)] * 3)
    rel = np.zeros((3, 12), bool)
    rel[0, 0] = rel[1, 2] = rel[2, 10] = True
    ap = metrics.average_precision_at_k(sim, rel, 10)
    np.testing.assert_allclose(ap, [1.0, 1 / 3, 0.0])
    assert metrics.recall_at_k(sim, rel, 10) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(sim, rel, 1) == pytest.approx(1 / 3)


def test_ties_are_pessimistic():
    # The correct item ties with two incorrect ones for the top score: it ranks third.
    sim = np.array([[0.5, 0.5, 0.5, 0.1]])
    rel = np.array([[True, False, False, False]])
    assert metrics.recall_at_k(sim, rel, 2) == 0.0
    assert metrics.recall_at_k(sim, rel, 3) == 1.0
    assert metrics.mean_average_precision_at_k(sim, rel, 10) == pytest.approx(1 / 3)
    # A constant embedding gets no credit below k = items.
    const = np.zeros((4, 6))
    eye = np.eye(4, 6, dtype=bool)
    assert metrics.recall_at_k(const, eye, 5) == 0.0
    assert metrics.recall_at_k(const, eye, 6) == 1.0


def test_several_correct_items():
    # Correct items at ranks 1 and 3 of 4: AP@10 = (1/1 + 2/3) / 2; AP@2 = (1/1) / 2.
    sim = np.array([[0.9, 0.8, 0.7, 0.6]])
    rel = np.array([[True, False, True, False]])
    assert metrics.mean_average_precision_at_k(sim, rel, 10) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.mean_average_precision_at_k(sim, rel, 2) == pytest.approx(0.5)


@pytest.mark.parametrize("sim,rel,k,match", [
    (np.zeros((2, 3)), np.ones((2, 3), bool), 0, "k must be"),
    (np.zeros((2, 3)), np.ones((2, 2), bool), 1, "shape"),
    (np.zeros((2, 3)), np.ones((2, 3)), 1, "boolean"),
    (np.zeros((2, 3)), np.array([[True, False, False], [False] * 3]), 1, "no relevant"),
    (np.array([[0.0, np.nan, 1.0]]), np.ones((1, 3), bool), 1, "non-finite"),
    (np.zeros(3), np.ones(3, bool), 1, "queries, items"),
])
def test_bad_input(sim, rel, k, match):
    with pytest.raises(ValueError, match=match):
        metrics.recall_at_k(sim, rel, k)


@pytest.mark.parametrize("k", [0, -1, 2.5, "3", None, True])
def test_non_positive_or_non_integer_k_is_refused(k):
    sim, rel = np.zeros((2, 3)), np.ones((2, 3), bool)
    for fn in (metrics.recall_at_k, metrics.mean_average_precision_at_k, metrics.hits_at_k):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            fn(sim, rel, k)


@pytest.mark.parametrize("ks,map_k,match", [
    ((-1, 5), 10, r"ks must hold positive integers, got \(-1, 5\)"),
    ((0,), 10, "ks must hold positive integers"),
    ((), 10, "ks is empty"),
    ((1, 5), 0, "map_k must be a positive integer, got 0"),
    ((1,), -3, "map_k must be a positive integer")])
def test_summary_refuses_cutoffs_without_a_meaning(ks, map_k, match):
    # R@-1 scored ranks [:-1], R@0 an empty top, mAP@0 divided by zero: all without error.
    rng = np.random.default_rng(5)
    sim, rel = _random_case(rng, queries=6, items=9, levels=4)
    with pytest.raises(ValueError, match=match):
        metrics.retrieval_summary(sim, rel, ks=ks, map_k=map_k)


def test_summary_takes_integral_cutoffs_of_any_integer_type():
    rng = np.random.default_rng(6)
    sim, rel = _random_case(rng, queries=8, items=7, levels=3)
    summary = metrics.retrieval_summary(sim, rel, ks=(np.int64(2), 20), map_k=np.int32(3))
    assert summary == {"R@2": pytest.approx(_brute_recall(sim, rel, 2)),
                       "R@20": pytest.approx(_brute_recall(sim, rel, 20)),
                       "mAP@3": pytest.approx(_brute_map(sim, rel, 3))}


def test_classification_metrics():
    true = np.array(["dog", "dog", "cat", "bird", "cat"])
    pred = np.array(["dog", "cat", "cat", "cat", "fish"])
    # F1: dog 2/3, cat 2*1/(2+2+1) = 0.4, bird 0, fish 0 (predicted, never true).
    assert metrics.macro_f1(true, pred) == pytest.approx((2 / 3 + 0.4 + 0 + 0) / 4)
    assert metrics.accuracy(true, pred) == pytest.approx(0.4)
    assert metrics.macro_f1(true, true) == 1.0
    with pytest.raises(ValueError, match="one length"):
        metrics.accuracy(true, pred[:2])
