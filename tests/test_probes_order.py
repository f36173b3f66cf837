"""atjax.probes.order: BAT, twin test, order-blind BAT and bootstrap intervals."""

import numpy as np
import pytest

from atjax.probes import order


def _unit(rng, n, d=16):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_scores_match_a_plain_loop():
    rng = np.random.default_rng(0)
    audio, orig, swapped = (rng.standard_normal((50, 8)) for _ in range(3))
    expected = []
    for a, o, s in zip(audio, orig, swapped):
        d = _cos(a, o) - _cos(a, s)
        expected.append(0.5 if abs(d) <= 1e-6 else float(d > 0))
    np.testing.assert_array_equal(order.bat_scores(audio, orig, swapped), expected)
    # The twin test is the same comparison seen from the text.
    np.testing.assert_array_equal(order.twin_scores(orig, audio, swapped),
                                  [0.5 if abs(_cos(o, a) - _cos(o, s)) <= 1e-6
                                   else float(_cos(o, a) > _cos(o, s))
                                   for o, a, s in zip(orig, audio, swapped)])


def test_order_blind_audio_encoder_scores_exactly_half():
    rng = np.random.default_rng(1)
    text, bat_swapped = _unit(rng, 101), _unit(rng, 101)
    audio = _unit(rng, 101)
    # An order-blind encoder maps a clip and its reversed twin to the same embedding; the
    # twin's may come from another batch, so allow float noise.
    twin = audio + 1e-9 * rng.standard_normal(audio.shape)
    scores = order.twin_scores(text, audio, twin)
    assert np.all(scores == 0.5) and scores.mean() == 0.5
    # Its order-blind BAT is its BAT: averaging a clip with an identical twin changes nothing.
    np.testing.assert_array_equal(order.order_blind_bat_scores(audio, twin, text, bat_swapped),
                                  order.bat_scores(audio, text, bat_swapped))


def test_text_blind_to_before_after_scores_half_on_both_bats():
    rng = np.random.default_rng(2)
    audio, twin, text = _unit(rng, 40), _unit(rng, 40), _unit(rng, 40)
    assert order.bat_scores(audio, text, text.copy()).mean() == 0.5
    assert order.order_blind_bat_scores(audio, twin, text, text.copy()).mean() == 0.5


def test_order_aware_model_and_its_control():
    # Audio = [first event, second event]; its twin swaps the halves. The text says the
    # order right (original) or wrong (swapped).
    rng = np.random.default_rng(3)
    a, b = _unit(rng, 30, 8), _unit(rng, 30, 8)
    audio, twin = np.hstack([a, b]), np.hstack([b, a])
    original, swapped = np.hstack([a, b]), np.hstack([b, a])
    assert order.twin_scores(original, audio, twin).mean() == 1.0
    assert order.bat_scores(audio, original, swapped).mean() == 1.0
    # With the clip and twin averaged, nothing separates the two sentences any more.
    assert order.order_blind_bat_scores(audio, twin, original, swapped).mean() == 0.5
    # A text side that alone prefers the original shows up in the control as well: here the
    # original sentences share a component with every clip, the swapped ones do not. BAT is
    # perfect, and so is its control, which tells that the audio's order was not needed.
    one = np.ones((30, 1))
    audio, twin = np.hstack([a, b, one]), np.hstack([b, a, one])
    original, swapped = np.hstack([a, b, one]), np.hstack([b, a, 0 * one])
    assert order.bat_scores(audio, original, swapped).mean() == 1.0
    assert order.order_blind_bat_scores(audio, twin, original, swapped).mean() == 1.0


def test_order_blind_is_unit_mean():
    rng = np.random.default_rng(4)
    audio, twin = _unit(rng, 5), _unit(rng, 5)
    mixed = order.order_blind(audio, twin)
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0)
    np.testing.assert_allclose(mixed, order.order_blind(twin, audio))
    expected = (audio + twin) / np.linalg.norm(audio + twin, axis=1, keepdims=True)
    np.testing.assert_allclose(mixed, expected)


def test_recall_at_1_scores():
    text = np.eye(3)
    audio = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    relevant = np.eye(3, dtype=bool)
    np.testing.assert_array_equal(order.recall_at_1_scores(text, audio, relevant), [1, 0, 0])


def test_bootstrap_ci():
    rng = np.random.default_rng(5)
    scores = (rng.random(400) < 0.5).astype(float)
    low, high = order.bootstrap_ci(scores, resamples=2000, seed=0)
    assert low < scores.mean() < high
    # Normal approximation of a proportion: half-width 1.96 * sqrt(p(1-p)/n) ~ 0.049.
    assert 0.04 < (high - low) / 2 < 0.06
    assert order.bootstrap_ci(scores, seed=0) == order.bootstrap_ci(scores, seed=0)
    assert order.bootstrap_ci(scores, seed=0) != order.bootstrap_ci(scores, seed=1)
    assert order.bootstrap_ci(np.full(10, 0.5)) == (0.5, 0.5)
    # Blocks of resamples give the same result as one block would (memory bound only).
    wide = order.bootstrap_ci(rng.random(5000), resamples=50)
    assert wide[0] < wide[1]
    with pytest.raises(ValueError, match="non-empty"):
        order.bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        order.bootstrap_ci([1.0], level=1.5)


def test_bootstrap_ci_items_are_resampled_as_before():
    # Without groups: the percentile interval of item means, drawn as an independent loop.
    rng = np.random.default_rng(6)
    scores = rng.random(300)
    draws = np.random.default_rng(4).integers(0, 300, size=(500, 300))
    want = np.quantile(scores[draws].mean(axis=1), [0.025, 0.975])
    np.testing.assert_allclose(order.bootstrap_ci(scores, resamples=500, seed=4), want,
                               rtol=1e-12)


def test_bootstrap_ci_resamples_whole_groups():
    """A pair and its twin are one draw: resampling them one by one misstates the interval
    in both directions."""
    n = 140
    groups = np.repeat(np.arange(n), 2)
    # The twin test with order-blind text: every pair scores 1 + 0 (or 0 + 1), so the mean
    # is exactly 1/2 in every resample of pairs, while items drawn alone seem to vary.
    opposite = np.tile([1.0, 0.0], n)
    assert order.bootstrap_ci(opposite, groups=groups) == (0.5, 0.5)
    assert np.subtract(*order.bootstrap_ci(opposite)[::-1]) > 0.1
    # Twins that score alike: the interval is that of n draws, not 2n (sqrt 2 wider).
    rng = np.random.default_rng(7)
    alike = np.repeat((rng.random(n) < 0.5).astype(float), 2)
    items = np.subtract(*order.bootstrap_ci(alike, resamples=4000)[::-1])
    pairs = np.subtract(*order.bootstrap_ci(alike, groups=groups, resamples=4000)[::-1])
    assert 1.25 < pairs / items < 1.6
    # Groups of unequal sizes: the mean is over the items drawn. Group "a" (one item, 1)
    # and "b" (two items, 0): drawing a+b gives 1/3, a+a 1, b+b 0.
    low, high = order.bootstrap_ci([1.0, 0.0, 0.0], groups=["a", "b", "b"], resamples=4000,
                                   level=0.4)
    assert low == pytest.approx(1 / 3) and high == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="groups has shape"):
        order.bootstrap_ci([1.0, 0.0], groups=[0])


def test_twin_test_is_half_when_either_side_is_order_blind():
    """The twin test needs order-aware audio and order-aware text: with captions that embed
    alike, it is 1/2 however well the audio tells the orders apart. The twin audio cosine
    measures the audio side alone."""
    rng = np.random.default_rng(8)
    a, b = _unit(rng, 30, 8), _unit(rng, 30, 8)
    audio, twin = np.hstack([a, b]), np.hstack([b, a])  # fully order-aware audio
    caption = np.hstack([a + b, a + b])  # the same for "A then B" and "B then A"
    scores = np.concatenate([order.twin_scores(caption, audio, twin),
                             order.twin_scores(caption, twin, audio)])
    assert scores.mean() == 0.5
    np.testing.assert_allclose(order.twin_audio_cosines(audio, audio + 1e-9), 1.0)
    cos = order.twin_audio_cosines(audio, twin)
    np.testing.assert_allclose(cos, [_cos(x, y) for x, y in zip(audio, twin)])
    assert cos.max() < 0.9


def test_summaries():
    out = order.summarize("bat", [1, 0, 1, 1], resamples=100)
    assert out["bat"] == 0.75 and out["bat_count"] == 4
    assert out["bat_ci_low"] <= 0.75 <= out["bat_ci_high"]
    diff = order.summarize_difference("delta", [1, 1, 0], [0, 1, 0], resamples=100)
    assert diff["delta"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="paired"):
        order.summarize_difference("d", [1, 0], [1])


def test_balanced_indices():
    groups = ["before"] * 7 + ["after"] * 3 + ["before"] * 2
    idx = order.balanced_indices(groups, seed=0)
    picked = [groups[i] for i in idx]
    assert picked.count("before") == picked.count("after") == 3
    assert list(idx) == sorted(idx)
    assert list(idx) == list(order.balanced_indices(groups, seed=0))
    assert len(order.balanced_indices([])) == 0
    capped = [groups[i] for i in order.balanced_indices(groups, seed=1, size=2)]
    assert capped.count("before") == capped.count("after") == 2


def test_bad_embeddings():
    with pytest.raises(ValueError, match="zero"):
        order.bat_scores(np.zeros((2, 3)), np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        order.twin_scores(np.ones((2, 3)), np.ones((3, 3)), np.ones((3, 3)))


def test_bootstrap_ci_draws_in_several_blocks_as_one_resample_at_a_time():
    # 4,096 units: the draws go in blocks of 2,000,000 // 4,096 = 488 resamples (488, 488
    # and a last one of 24 for 1,000). Each resample must be one fresh draw of 4,096 units
    # from the one seeded generator, as a plain loop makes them, one at a time.
    n, resamples, seed = 4096, 1000, 9
    assert resamples > 2 * (2_000_000 // n)
    rng = np.random.default_rng(10)
    # Items in groups of two (a pair and its twin), labels shuffled so that a group's
    # members lie apart; the mean of a resample is over the items of the groups drawn.
    labels = rng.permutation(np.repeat(np.arange(n), 2))
    scores = rng.random(2 * n)
    members = {}
    for i, g in enumerate(labels):
        members.setdefault(int(g), []).append(i)
    units = sorted(members)
    draws = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        drawn = [units[k] for k in draws.integers(0, n, size=n)]
        means.append(sum(scores[i] for g in drawn for i in members[g])
                     / sum(len(members[g]) for g in drawn))
    want = np.quantile(means, [0.05, 0.95])
    got = order.bootstrap_ci(scores, groups=labels, resamples=resamples, seed=seed, level=0.9)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # Without groups, 8,192 items: blocks of 244, the last one of 24.
    draws = np.random.default_rng(seed)
    items = [scores[draws.integers(0, 2 * n, size=2 * n)].mean() for _ in range(resamples)]
    np.testing.assert_allclose(order.bootstrap_ci(scores, resamples=resamples, seed=seed),
                               np.quantile(items, [0.025, 0.975]), rtol=1e-12)
    # Group members stay together in every block: a group that scores 1 + 0 makes every
    # resample's mean exactly 1/2.
    opposite = np.where(np.arange(2 * n) == np.array([members[int(g)][0] for g in labels]),
                        1.0, 0.0)
    assert order.bootstrap_ci(opposite, groups=labels, resamples=resamples) == (0.5, 0.5)
