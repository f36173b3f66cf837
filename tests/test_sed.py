"""The SED task's pieces: frames, events, and the segment metrics against sed_eval."""

import numpy as np
import pytest

from atjax.evaluate import sed

CLASSES = ["dog", "cat", "speech"]


def _random_clip(rng, duration, hop, name):
    """Random reference events and random frame similarities for one clip."""
    reference = []
    for label in CLASSES:
        for _ in range(rng.integers(0, 3)):
            on = float(np.round(rng.uniform(0, duration - 0.1), 3))
            off = float(min(duration, np.round(on + rng.uniform(0.05, 2.0), 3)))
            reference.append({"filename": name, "event_label": label, "onset": on,
                              "offset": off})
    frames = sed.num_frames(int(round(duration * 16000)), 16000, hop)
    sim = rng.uniform(0, 1, (frames, len(CLASSES)))
    return reference, duration, sim


@pytest.mark.parametrize("hop,resolution", [(0.05, 1.0), (0.03, 1.0), (0.05, 0.5)])
def test_fast_segment_metrics_equal_sed_eval(hop, resolution):
    rng = np.random.default_rng(int(hop * 100 + resolution * 10))
    clips = [_random_clip(rng, d, hop, f"c{i}")
             for i, d in enumerate([3.0, 3.37, 2.0, 4.96, 1.5])]
    clips.append(([], 2.5, rng.uniform(0, 1, (sed.num_frames(40000, 16000, hop), 3))))
    ref = np.concatenate([sed.segment_roll(r, CLASSES, d, resolution) for r, d, _ in clips])
    seg_max = np.concatenate([sed.segment_max(s, hop, d, resolution) for _, d, s in clips])
    for threshold in (0.0, 0.3, 0.5, 0.8, 0.97, 1.0):
        estimates = [sed.activity_to_events(s > threshold, CLASSES, hop, d, filename=f"c{i}")
                     for i, (_, d, s) in enumerate(clips)]
        # The vectorised roll is the roll of the events found at this threshold.
        est = np.concatenate([sed.segment_roll(e, CLASSES, d, resolution)
                              for e, (_, d, _) in zip(estimates, clips)])
        np.testing.assert_array_equal(seg_max > threshold, est)
        fast = sed.segment_scores(ref, seg_max > threshold)
        library = sed.sed_eval_scores([(r, e, d) for (r, d, _), e in zip(clips, estimates)],
                                      CLASSES, resolution)
        for key in ("f1", "f1_macro", "error_rate", "precision", "recall"):
            np.testing.assert_allclose(fast[key], library[key], rtol=1e-12, atol=1e-12,
                                       err_msg=f"{key} at threshold {threshold}")


def test_segment_metrics_by_hand():
    # Reference: dog in segments 0-2, cat in 3. Estimate: dog 0-2 (0.7-2.9 s), speech in 3.
    reference = [{"event_label": "dog", "onset": 0.5, "offset": 2.3},
                 {"event_label": "cat", "onset": 3.0, "offset": 4.0}]
    estimate = [{"event_label": "dog", "onset": 0.7, "offset": 2.9},
                {"event_label": "speech", "onset": 3.2, "offset": 3.8}]
    ref = sed.segment_roll(reference, CLASSES, 5.0, 1.0)
    est = sed.segment_roll(estimate, CLASSES, 5.0, 1.0)
    scores = sed.segment_scores(ref, est)
    # TP 3, FP 1, FN 1 -> P = R = F = 0.75; segment 3 holds one substitution: ER = 1/4.
    assert scores["f1"] == pytest.approx(0.75)
    assert scores["error_rate"] == pytest.approx(0.25)
    # Class-wise F: dog 1, cat 0 (no output), speech undefined (no reference) -> mean 0.5.
    assert scores["f1_macro"] == pytest.approx(0.5)
    library = sed.sed_eval_scores([(reference, estimate, 5.0)], CLASSES, 1.0)
    assert library["f1"] == pytest.approx(0.75) and library["f1_macro"] == pytest.approx(0.5)
    assert library["f1_dog"] == 1.0 and library["f1_cat"] == 0.0


def test_threshold_search_matches_sed_eval_search():
    rng = np.random.default_rng(7)
    hop, res = 0.05, 1.0
    clips = [_random_clip(rng, 3.0, hop, f"c{i}") for i in range(6)]
    # Make the similarity informative: high inside reference events.
    for reference, duration, sim in clips:
        times = sed.frame_times(sim.shape[0], hop, duration)
        for e in reference:
            inside = (times[:-1] >= e["onset"]) & (times[:-1] < e["offset"])
            sim[inside, CLASSES.index(e["event_label"])] += 0.5
        sim /= 1.5
    thresholds = np.linspace(0, 1, 21)
    ref = np.concatenate([sed.segment_roll(r, CLASSES, d, res) for r, d, _ in clips])
    seg_max = np.concatenate([sed.segment_max(s, hop, d, res) for _, d, s in clips])
    scores = sed.sweep(ref, seg_max, thresholds)
    for select in sed.SELECT:
        library = []
        for t in thresholds:
            est = [(r, sed.activity_to_events(s > t, CLASSES, hop, d), d) for r, d, s in clips]
            library.append(sed.sed_eval_scores(est, CLASSES, res)[select])
        library = np.nan_to_num(np.array(library), nan=-np.inf if select != "error_rate"
                                else np.inf)
        expected = int(np.argmin(library) if select == "error_rate" else np.argmax(library))
        assert sed.choose_threshold(scores, thresholds, select) == expected
    with pytest.raises(ValueError, match="select"):
        sed.choose_threshold(scores, thresholds, "auc")


def test_frame_windows_are_centred():
    rate, hop = 1000, 0.05
    audio = np.zeros(1030, np.float32)
    audio[525] = 1.0                      # in frame 10 = [0.5, 0.55) s
    windows = sed.frame_windows(audio, sample_rate=rate, hop_seconds=hop, window_samples=200)
    assert windows.shape == (21, 200)     # ceil(1.03 / 0.05) frames
    # Frame i's window starts at its centre (i + 0.5) * 50 samples minus 100.
    for i in range(21):
        start = int(round((i + 0.5) * 50)) - 100
        expected = np.zeros(200, np.float32)
        for j in range(200):
            if 0 <= start + j < audio.size:
                expected[j] = audio[start + j]
        np.testing.assert_array_equal(windows[i], expected)
    with pytest.raises(ValueError, match="hop"):
        sed.frame_windows(audio, sample_rate=rate, hop_seconds=0.5, window_samples=100)


def test_activity_to_events():
    active = np.zeros((70, 2), bool)
    active[10:60, 0] = True               # 0.5 s .. 3.0 s exactly (60 * 0.05 rounds to 3.0)
    active[65:, 1] = True                 # runs to the clip's end, clipped at 3.42 s
    events = sed.activity_to_events(active, ["a", "b"], 0.05, 3.42, filename="x")
    assert events == [
        {"filename": "x", "event_label": "a", "onset": 0.5, "offset": 3.0},
        {"filename": "x", "event_label": "b", "onset": 3.25, "offset": 3.42}]
    roll = sed.segment_roll(events, ["a", "b"], 3.42, 1.0)
    np.testing.assert_array_equal(roll, [[1, 0], [1, 0], [1, 0], [0, 1]])
    with pytest.raises(ValueError, match="not among the classes"):
        sed.segment_roll([{"event_label": "z", "onset": 0, "offset": 1}], ["a"], 2.0, 1.0)


def test_split_clips():
    val, test = sed.split_clips(50, 0.2, seed=3)
    assert len(val) == 10 and len(test) == 40
    assert set(val).isdisjoint(test) and set(val) | set(test) == set(range(50))
    assert np.array_equal(val, sed.split_clips(50, 0.2, seed=3)[0])
    assert not np.array_equal(val, sed.split_clips(50, 0.2, seed=4)[0])
    assert [len(x) for x in sed.split_clips(2, 0.2, seed=0)] == [1, 1]
    with pytest.raises(ValueError, match="validation_fraction"):
        sed.split_clips(10, 1.0, seed=0)


def test_validation_clips_without_events_are_an_error():
    # Events only in the test clips: no threshold can be chosen on the validation clips
    # (not a silent 0.0 with a null validation F1).
    from standin_embedder import ToneEmbedder, sequence

    from atjax import evaluate

    rate, count = 16000, 10
    val, _ = sed.split_clips(count, 0.2, seed=0)
    clips = [{"id": f"d{i}", "audio": np.zeros(2 * rate, np.float32), "events": []}
             for i in range(count)]
    for i in set(range(count)) - set(val.tolist()):
        clips[i]["audio"][:rate] += sequence(["beep"], 1.0, rate)
        clips[i]["events"] = [(0.0, 1.0, "beep")]
    with pytest.raises(ValueError, match=r"desed:eval: the 2 validation clips \(validation_fraction"
                                         r"=0.2, seed=0\) hold no events"):
        evaluate.run_task("sed", ToneEmbedder(), read=lambda *a: clips,
                          classes=("beep", "hum"), thresholds=11)
