"""ACBA: cross-fade and sentences against independent computations, the TF twin of the
numpy reference, and the writer's files read back."""

import csv
import json

import numpy as np
import pytest
import soundfile

from data_pipeline import acba
from data_pipeline import sources as sources_lib
from data_pipeline.acba import stored, writer


def loop_crossfade(first, second, fade):
    """Plain-Python cross-fade: first fades out over its last F samples while second fades
    in over its first F, F = min(fade, len(first), len(second)); gains (i + 0.5) / F."""
    f = min(fade, len(first), len(second))
    out = [float(v) for v in first[: len(first) - f]]
    for i in range(f):
        gain_in = (i + 0.5) / f
        out.append(float(first[len(first) - f + i]) * (1.0 - gain_in) + float(second[i]) * gain_in)
    out += [float(v) for v in second[f:]]
    return np.array(out)


@pytest.mark.parametrize("n1,n2,seconds", [
    (3000, 2500, 1.0),     # both longer than the fade (1000 samples at 1 kHz)
    (400, 2500, 1.0),      # first clip shorter than the fade
    (2500, 300, 1.0),      # second clip shorter than the fade
    (1000, 1000, 1.0),     # exactly the fade
    (50, 70, 0.001),       # one-sample fade
    (50, 70, 0.0),         # no fade: plain concatenation
])
def test_crossfade_matches_a_plain_loop(n1, n2, seconds):
    rng = np.random.default_rng(n1 + n2)
    first = rng.uniform(-1, 1, n1).astype(np.float32)
    second = rng.uniform(-1, 1, n2).astype(np.float32)
    got = acba.crossfade(first, second, sample_rate=1000, seconds=seconds)
    want = loop_crossfade(first, second, int(round(seconds * 1000)))
    assert got.dtype == np.float32
    assert got.shape == want.shape == (n1 + n2 - min(int(round(seconds * 1000)), n1, n2),)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)


def test_crossfade_is_linear_and_sums_to_one():
    # Constant inputs expose the gains themselves: ones fading out, twos fading in.
    out = acba.crossfade(np.ones(10), 2 * np.ones(10), sample_rate=4, seconds=1.0)  # F = 4
    np.testing.assert_allclose(out[6:10], [1 + (i + 0.5) / 4 for i in range(4)], atol=1e-7)
    np.testing.assert_array_equal(out[:6], 1)
    np.testing.assert_array_equal(out[10:], 2)


def test_crossfade_rejects_bad_input():
    with pytest.raises(ValueError, match="no samples"):
        acba.crossfade(np.zeros(0), np.ones(3), 10)
    with pytest.raises(ValueError, match="1-D"):
        acba.crossfade(np.zeros((2, 3)), np.ones(3), 10)
    with pytest.raises(ValueError, match=">= 0"):
        acba.crossfade(np.ones(3), np.ones(3), 10, seconds=-1)


@pytest.mark.parametrize("prep,want", [
    ("before", "A dog barks before a car passes by"),
    ("after", "A car passes by after a dog barks"),  # true order: the dog first
    ("then", "A dog barks then a car passes by"),
    ("followed by", "A dog barks followed by a car passes by"),
])
def test_join_captions_each_preposition(prep, want):
    assert acba.join_captions("A dog barks.", "A Car passes by", prep) == want


def test_join_captions_normalises_parts():
    assert acba.join_captions("  Birds   CHIRP...  ", "Rain falls!", "then") == "Birds chirp then rain falls"
    assert acba.join_captions("water runs", "a man speaks", "before") == "Water runs before a man speaks"
    assert acba.join_captions("water runs", "a man speaks", "after") == "A man speaks after water runs"
    with pytest.raises(ValueError, match="preposition"):
        acba.join_captions("a", "b", "while")
    with pytest.raises(ValueError, match="empty"):
        acba.join_captions(" . ", "b", "then")


def test_eligible_is_the_authors_substring_test():
    assert acba.eligible("A dog barks and a cat meows")
    assert acba.eligible("A car is followed closely by a truck")  # not the phrase "followed by"
    assert not acba.eligible("A dog barks THEN a cat meows")
    assert not acba.eligible("Before the rain")
    assert not acba.eligible("Birds sing in the afternoon")  # substring, as the authors' script
    assert not acba.eligible("A car is followed by a truck")


@pytest.mark.parametrize("n1,n2,clip,fade,want", [
    (500, 500, 100, 10, (55, 55, 10)),   # both long: (L + F) / 2 each, result exactly L
    (500, 500, 101, 10, (56, 55, 10)),   # odd budget: the first part gets the extra sample
    (20, 500, 100, 10, (20, 90, 10)),    # short first part: the second gets the rest
    (500, 30, 100, 10, (80, 30, 10)),
    (30, 40, 100, 10, (30, 40, 10)),     # both fit: kept whole (then zero-padded)
    (5, 500, 100, 10, (5, 100, 5)),      # shorter than the fade: the fade shortens
    (500, 500, None, 10, (500, 500, 10)),
])
def test_part_lengths(n1, n2, clip, fade, want):
    p1, p2, f = acba.part_lengths(n1, n2, clip, fade)
    assert (p1, p2, f) == want
    if clip is not None:
        assert p1 + p2 - f <= clip
        if n1 + n2 - f >= clip:
            assert p1 + p2 - f == clip  # long enough clips fill the training length exactly


def test_fit_pair_crops_then_fades():
    rng = np.random.default_rng(0)
    first, second = rng.uniform(-1, 1, 500), rng.uniform(-1, 1, 300)
    out = acba.fit_pair(first, second, clip_samples=100, fade=10, first_fraction=0.5, second_fraction=0.999)
    # Windows by hand: 55 of 500 at floor(0.5 * 446) = 223; 55 of 300 at the last start, 245.
    want = loop_crossfade(first[223:278], second[245:300], 10)
    np.testing.assert_allclose(out, want, atol=2e-7)
    short = acba.fit_pair(first[:30], second[:40], clip_samples=100, fade=10)
    np.testing.assert_allclose(short[:60], loop_crossfade(first[:30], second[:40], 10), atol=2e-7)
    np.testing.assert_array_equal(short[60:], 0)


def test_tf_synthesis_equals_numpy_reference():
    rng = np.random.default_rng(1)
    import tensorflow as tf

    cases = [(500, 500, 100, 10), (500, 500, 101, 10), (20, 500, 100, 10), (500, 30, 100, 10),
             (30, 40, 100, 10), (5, 500, 100, 10), (7, 3, 100, 10), (300, 250, None, 10), (60, 80, 100, 0)]
    for n1, n2, clip, fade in cases:
        for fr1, fr2 in [(0.0, 0.0), (0.3, 0.9), (0.999999, 0.5)]:
            a, b = rng.uniform(-1, 1, n1).astype(np.float32), rng.uniform(-1, 1, n2).astype(np.float32)
            want = acba.fit_pair(a, b, clip_samples=clip, fade=fade, first_fraction=fr1, second_fraction=fr2)
            got = acba.fit_pair_tf(tf.constant(a), tf.constant(b), clip_samples=clip, fade=fade,
                                   first_fraction=tf.constant(fr1, tf.float64),
                                   second_fraction=tf.constant(fr2, tf.float64)).numpy()
            assert got.shape == want.shape, (n1, n2, clip, fade)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-7, err_msg=str((n1, n2, clip, fade, fr1, fr2)))


def _pool(tmp_rate=1000):
    """A tiny pool: eight clips with one caption each; two captions are not eligible."""
    import tensorflow as tf

    rng = np.random.default_rng(2)
    captions = [f"Animal {i} makes sound {i}." for i in range(6)] + ["A door shuts then opens", "Rain after noon"]
    audio = [(rng.uniform(-0.5, 0.5, 80 + 10 * i) * 32768).astype(np.int16) for i in range(8)]
    ids = [f"clip{i}" for i in range(8)]
    width = max(len(a) for a in audio)
    padded = np.stack([np.pad(a, (0, width - len(a))) for a in audio])

    def element(i, pcm, n, caption):
        return {"id": i, "audio": pcm[:n], "captions": caption[tf.newaxis]}

    ds = tf.data.Dataset.from_tensor_slices((ids, padded, [len(a) for a in audio], captions)).map(element)
    return ds, dict(zip(ids, audio)), dict(zip(ids, captions))


def test_writer_writes_true_pairs_and_reads_back(tmp_path):
    ds, audio, captions = _pool()
    out = tmp_path / "acba"
    # clip_seconds 0.5 at 1 kHz = 500 samples: the parts (80-150 samples) always fit whole.
    csv_path = writer.write(source={"pool": ds}, data_dir="", out=str(out), count=6, seed=3,
                          sample_rate=1000, crossfade_seconds=0.02, clip_seconds=0.5)
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 6 and list(rows[0]) == list(stored.CSV_COLUMNS)
    for row in rows:
        first, second = row["first_id"], row["second_id"]
        assert first != second
        assert acba.eligible(captions[first]) and acba.eligible(captions[second])
        assert row["caption"] == acba.join_captions(captions[first], captions[second], row["preposition"])
        pcm, rate = soundfile.read(out / "audio" / row["file_name"], dtype="int16")
        assert rate == 1000 and pcm.shape == (500,)
        want = np.pad(loop_crossfade(audio[first] / 32768, audio[second] / 32768, 20),
                      (0, 500 - len(audio[first]) - len(audio[second]) + 20))
        np.testing.assert_allclose(pcm / 32768, want, atol=1 / 32768)
    assert json.loads((out / "acba.json").read_text())["count"] == 6

    back = list(stored.load_written(str(out), 1000).as_numpy_iterator())
    assert [b["captions"][0].decode() for b in back] == [r["caption"] for r in rows]
    np.testing.assert_array_equal(back[0]["audio"], soundfile.read(out / "audio" / rows[0]["file_name"],
                                                                   dtype="int16")[0])
    with pytest.raises(ValueError, match="16000 Hz"):
        stored.load_written(str(out), 16000)
    with pytest.raises(FileNotFoundError, match="acba.csv"):
        stored.load_written(str(tmp_path), 1000)
    # Training on clips of the written length or longer reads it; on shorter ones, whose
    # crop would cut a sound off, the source spec is refused with the fix.
    assert len(list(stored.load_written(str(out), 1000, clip_samples=600))) == 6
    sources_lib.resolve_sources(f"acba:{out}", data_dir="", sample_rate=1000, clip_samples=500)
    with pytest.raises(ValueError, match="pairs of 0.5 s.*--clip_seconds 0.4"):
        sources_lib.resolve_sources(f"acba:{out}", data_dir="", sample_rate=1000, clip_samples=400)


def test_writer_cli_keeps_whole_clips(tmp_path):
    # A pool in the written-set layout (which the `acba:DIR` source spec reads), so the CLI
    # runs end to end without a prepared TFDS dataset.
    pool = tmp_path / "pool"
    (pool / "audio").mkdir(parents=True)
    rng = np.random.default_rng(4)
    with open(pool / "acba.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(stored.CSV_COLUMNS)
        for i in range(4):
            soundfile.write(pool / "audio" / f"p{i}.wav", (rng.uniform(-0.5, 0.5, 500) * 32768).astype(np.int16),
                            1000, subtype="PCM_16")
            w.writerow([f"p{i}.wav", f"Sound number {i}", "", "", ""])
    (pool / "acba.json").write_text(json.dumps({"sample_rate": 1000}))
    out = tmp_path / "out"
    writer.main(["write", "--source", f"acba:{pool}", "--data_dir", str(tmp_path), "--out", str(out),
               "--count", "3", "--sample_rate", "1000", "--crossfade_seconds", "0.1", "--clip_seconds", "0"])
    rows = list(csv.DictReader(open(out / "acba.csv")))
    assert len(rows) == 3
    for row in rows:
        pcm, _ = soundfile.read(out / "audio" / row["file_name"], dtype="int16")
        assert pcm.shape == (500 + 500 - 100,)  # whole 500-sample clips, 100-sample fade
        assert row["caption"] == acba.join_captions(f"Sound number {row['first_id'][1:]}",
                                                    f"Sound number {row['second_id'][1:]}", row["preposition"])
    with pytest.raises(ValueError, match="--count"):
        writer.write(source=f"acba:{pool}", data_dir="", out=str(tmp_path / "x"), count=0, sample_rate=1000)
    with pytest.raises(ValueError, match="holds whole clips"):
        stored.load_written(str(out), 1000, clip_samples=2000)


def test_writer_names_why_pool_clips_were_excluded(tmp_path):
    # At 1 kHz a 0.05 s cross-fade is 50 samples: the pool's clips of 80-150 samples hold
    # two; 0.07 s (140) makes six of them too short, and the other two name an order.
    ds, _, _ = _pool()
    with pytest.raises(ValueError) as err:
        writer.write(source={"pool": ds}, data_dir="", out=str(tmp_path / "acba"), count=2,
                   sample_rate=1000, crossfade_seconds=0.07, clip_seconds=None)
    message = str(err.value)
    assert "found 0" in message
    assert "6 shorter than two cross-fades (0.14 s; --crossfade_seconds)" in message
    assert "2 whose every caption names an order" in message


def test_writer_runs_as_a_module():
    # `python -m data_pipeline.acba write ...` is the documented command.
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "data_pipeline.acba", "write", "--help"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--clip_seconds" in r.stdout and "--crossfade_seconds" in r.stdout
