"""The synthetic sound-event corpus and its TFDS builder.

Captions are checked against the audio with a detector written here from log-mel band
energies (librosa), whose class templates are learnt from single-event clips of another
corpus seed; it uses nothing of the generator but the class names and phrases.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import librosa
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from data_pipeline.synthetic_events import corpus

# Large enough for every class among held-out singles and ~200 pairs; a few seconds to make.
CONFIG = corpus.CorpusConfig(train_size=400, heldout_size=280)
SR = CONFIG.sample_rate
N_FFT, HOP = 512, 128
CONNECTIVES = ("before", "after", "then", "followed by", "as", "while", "with")


# ----------------------------------------------------------------------------------------
# Reading captions back: phrase -> class, connective -> order.

PHRASES = {p.lower(): c.name for c in corpus.CLASSES for p in c.captions + c.clauses}


def _phrase_class(text: str) -> str:
    assert text in PHRASES, f"{text!r} is not a phrase of any class"
    return PHRASES[text]


def parse(caption: str) -> tuple[str, str, str | None, str | None]:
    """(relation, first class, second class, connective); relation in single/sequence/together.

    For a sequence, first/second are in time order ("B after A" -> A, B)."""
    text = caption.lower()
    assert caption[0].isupper(), caption
    words = f" {text} "
    found = [w for w in CONNECTIVES if f" {w} " in words]
    if not found:
        return "single", _phrase_class(text), None, None
    assert len(found) == 1, f"{caption!r} has several connectives {found}"
    word = found[0]
    left, right = text.split(f" {word} ")
    a, b = _phrase_class(left), _phrase_class(right)
    if word == "after":
        return "sequence", b, a, word
    if word in corpus.PREPOSITIONS:
        return "sequence", a, b, word
    return "together", a, b, word


# ----------------------------------------------------------------------------------------
# The detector.


def _frame_seconds(i):
    return (i * HOP + N_FFT // 2) / SR


def _frame_index(seconds):
    return int(round((seconds * SR - N_FFT // 2) / HOP))


class Detector:
    """Event activity and identity from 40-band log-mel energies over a per-clip background.

    A frame is active when some band (smoothed over 5 frames) is 10 dB above that band's
    level in the quietest quarter of the clip. Profiles are per-band excess (dB over that
    background, clipped to [0, 40]) over the first 0.25 s, the last 0.25 s and the whole of
    the active span; class templates average them over single-event clips. Head and tail
    tell a rising chirp from a falling one, which have the same average spectrum.
    """

    REGION = 0.25
    MEL = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=40, fmax=SR / 2).astype(np.float64)

    def __init__(self, singles):
        profiles = collections.defaultdict(list)
        for ex in singles:
            profiles[ex.events[0][0]].append(self.look(ex.audio))
        missing = set(corpus.CLASS_NAMES) - set(profiles)
        assert not missing, f"no single-event clips of {missing} to learn templates from"
        parts = ("head", "tail", "whole")
        self.templates = {k: [np.mean([o[part] for o in v], 0) for part in parts]
                          for k, v in profiles.items()}
        # The range of each band's excess over a class's clips: with pitch jitter and random
        # levels, a band is "always loud" or "always quiet" for a class only by these bounds.
        self.quietest = {k: np.min([o["whole"] for o in v], 0) for k, v in profiles.items()}
        self.loudest = {k: np.max([o["whole"] for o in v], 0) for k, v in profiles.items()}

    @classmethod
    def look(cls, audio):
        """Active span (s), head/tail/whole profiles, and what `excess` needs."""
        power = np.abs(librosa.stft(audio.astype(np.float64), n_fft=N_FFT, hop_length=HOP,
                                    center=False)) ** 2
        mel = (cls.MEL @ power).T
        smooth = scipy.ndimage.uniform_filter1d(mel, 5, axis=0, mode="nearest")
        quiet = np.argsort(smooth.sum(1))[: len(smooth) // 4]
        background = np.median(smooth[quiet], 0)
        active = np.flatnonzero(10 * np.log10((smooth / background).max(1)) > 10)
        start, end = active[0], active[-1]
        k = int(cls.REGION * SR / HOP)
        return dict(
            span=(_frame_seconds(start), _frame_seconds(end)),
            head=cls._excess(mel[start:start + k], background),
            tail=cls._excess(mel[end - k + 1:end + 1], background),
            whole=cls._excess(mel[start:end + 1], background),
            mel=mel, background=background)

    @staticmethod
    def _excess(mel, background):
        return np.clip(10 * np.log10(mel.mean(0) / background), 0, 40)

    @classmethod
    def excess(cls, seen, start_s, end_s):
        return cls._excess(seen["mel"][_frame_index(start_s):_frame_index(end_s)],
                           seen["background"])

    @staticmethod
    def _cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

    def classify(self, seen):
        scores = {k: self._cos(seen["head"], t[0]) + self._cos(seen["tail"], t[1])
                  + self._cos(seen["whole"], t[2]) for k, t in self.templates.items()}
        return max(scores, key=scores.get)

    def order_margin(self, seen, first, second):
        """> 0 when the clip's start sounds like `first` and its end like `second`."""
        head, tail = seen["head"], seen["tail"]
        t1, t2 = self.templates[first], self.templates[second]
        return (self._cos(head, t1[0]) + self._cos(tail, t2[1])
                - self._cos(head, t2[0]) - self._cos(tail, t1[1]))

    def signature(self, name, others):
        """Bands that `name` always fills (>= 8 dB) and every class in `others` never does
        (<= 2 dB); energy there means `name` sounds."""
        quiet = np.all([self.loudest[o] <= 2 for o in others], 0)
        return (self.quietest[name] >= 8) & quiet


# ----------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def train_examples():
    return list(corpus.train(CONFIG))


@pytest.fixture(scope="module")
def heldout_examples():
    return corpus.heldout(CONFIG)


@pytest.fixture(scope="module")
def detector():
    # Templates from another corpus (seed) of single events only, 24 clips per class.
    singles = corpus.CorpusConfig(seed=12345, heldout_size=24 * len(corpus.CLASSES),
                                  pair_fraction=0.0, mix_fraction=0.0)
    return Detector(corpus.heldout(singles))


def _pairs_with_twins(train_examples, heldout_examples):
    """(pair example, twin audio, twin captions) for held-out and train pairs."""
    by_id = {e.id: e for e in heldout_examples}
    out = [(e, by_id[e.twin].audio, [by_id[e.twin].caption]) for e in heldout_examples
           if e.kind == "pair" and int(e.id.split("-")[1]) < int(e.twin.split("-")[1])]
    out += [(e, e.twin_audio, e.twin_captions) for e in train_examples if e.kind == "pair"]
    return out


# ----------------------------------------------------------------------------------------
# Classes, configuration, captions.


def test_classes_have_clean_distinct_phrases():
    assert len(corpus.CLASSES) >= 12
    assert len(set(corpus.CLASS_NAMES)) == len(corpus.CLASSES)
    phrases = [p.lower() for c in corpus.CLASSES for p in c.captions + c.clauses]
    assert len(phrases) == len(set(phrases)), "a phrase names two classes"
    for c in corpus.CLASSES:
        assert len(c.captions) >= 3 and len(c.clauses) >= 3, c.name
        for p in c.captions + c.clauses:
            assert p == p.strip() and p[0].islower(), p
            # The ACBA filter and the probes search for these (ACBA by substring).
            for word in ("before", "after", "then", "followed by"):
                assert word not in p, (p, word)
            for word in ("as", "while", "with", "by"):
                assert word not in p.split(), (p, word)


def test_config_from_mapping_and_validation():
    mapping = dict(sample_rate=32000, clip_seconds=2.0, train_size=10)
    assert corpus.CorpusConfig.from_mapping(mapping) == corpus.CorpusConfig(**mapping)
    assert corpus.CorpusConfig.from_mapping(ml_collections.ConfigDict(mapping)) \
        == corpus.CorpusConfig(**mapping)
    with pytest.raises(ValueError, match="clip_secnds"):
        corpus.CorpusConfig.from_mapping({"clip_secnds": 2.0})
    with pytest.raises(ValueError, match="sum"):
        corpus.CorpusConfig(pair_fraction=0.7, mix_fraction=0.4)
    with pytest.raises(ValueError, match="sample_rate"):
        corpus.CorpusConfig(sample_rate=8000)
    with pytest.raises(ValueError, match="too short"):
        corpus.CorpusConfig(clip_seconds=0.5, crossfade_seconds=0.1)
    with pytest.raises(ValueError, match="train_size"):
        corpus.CorpusConfig(train_size=10.5)
    with pytest.raises(IndexError, match="train index 400"):
        corpus.example("train", CONFIG.train_size, CONFIG)
    with pytest.raises(ValueError, match="split 'test'"):
        corpus.example("test", 0, CONFIG)


@pytest.mark.parametrize("prep,expected", [
    ("before", "A high beep before a low hum"),
    ("after", "A low hum after a high beep"),   # the later event is named first
    ("then", "A high beep then a low hum"),
    ("followed by", "A high beep followed by a low hum"),
])
def test_caption_pair_states_true_order(prep, expected):
    assert corpus.caption_pair("a high beep", "a low hum", prep) == expected
    assert corpus.caption_pair("A high beep ", "A low hum", prep) == expected
    assert parse(expected) == ("sequence", "high_tone", "low_tone", prep)


def test_caption_pair_rejects_bad_input():
    with pytest.raises(ValueError, match="as"):
        corpus.caption_pair("a", "b", "as")
    with pytest.raises(ValueError, match="non-empty"):
        corpus.caption_pair(" ", "a hum", "before")


def test_deterministic_random_access():
    small = corpus.CorpusConfig(train_size=24, heldout_size=20)
    forward = list(corpus.train(small))
    backward = [corpus.example("train", i, small) for i in reversed(range(24))][::-1]
    again = list(corpus.train(dict(train_size=24, heldout_size=20)))
    other = list(corpus.train(corpus.CorpusConfig(train_size=24, heldout_size=20, seed=1)))
    for a, b, c, d in zip(forward, backward, again, other):
        for x in (b, c):
            assert a.audio.tobytes() == x.audio.tobytes()
            assert (a.id, a.captions, a.kind, a.events) == (x.id, x.captions, x.kind, x.events)
            if a.twin_audio is not None:
                assert a.twin_audio.tobytes() == x.twin_audio.tobytes()
                assert a.twin_captions == x.twin_captions
        assert a.audio.tobytes() != d.audio.tobytes()
    assert [a.captions for a in forward] != [d.captions for d in other]
    held = corpus.heldout(small)
    for i in (0, 7, 19):
        assert corpus.example("heldout", i, small).audio.tobytes() == held[i].audio.tobytes()


def test_clip_format(train_examples, heldout_examples):
    for ex in train_examples + heldout_examples:
        for audio in (ex.audio, ex.twin_audio):
            if audio is None:
                continue
            assert audio.dtype == np.float32 and audio.shape == (CONFIG.clip_samples,)
            assert np.abs(audio).max() < 0.99, f"{ex.id} clips"
        assert ex.caption == ex.captions[0]
        for _, onset, offset in ex.events:
            assert 0 <= onset < offset <= CONFIG.clip_seconds
    kinds = collections.Counter(e.kind for e in train_examples)
    n = CONFIG.train_size
    assert abs(kinds["pair"] / n - CONFIG.pair_fraction) < 0.08, kinds
    assert abs(kinds["mix"] / n - CONFIG.mix_fraction) < 0.08, kinds


def test_captions_agree_with_events(train_examples, heldout_examples):
    for ex in train_examples + heldout_examples:
        classes = [name for name, _, _ in ex.events]
        parsed = [parse(c) for c in ex.captions]
        if ex.kind == "single":
            assert len(ex.events) == 1 and ex.preposition is None
            assert all(p[:2] == ("single", classes[0]) for p in parsed), ex
        elif ex.kind == "pair":
            (a, _, a_off), (b, b_on, _) = ex.events
            assert b_on < a_off  # cross-faded, in this order
            assert b_on == pytest.approx(a_off - CONFIG.crossfade_seconds, abs=1 / SR)
            assert all(p[:3] == ("sequence", a, b) for p in parsed), (ex.events, ex.captions)
            # Every pair teaches every preposition, "after" included.
            assert sorted(p[3] for p in parsed) == sorted(corpus.PREPOSITIONS)
            assert parsed[0][3] == ex.preposition
            if ex.twin_captions is not None:
                assert len(ex.twin_captions) == len(ex.captions)
                for caption, twin_caption in zip(ex.captions, ex.twin_captions):
                    swapped = parse(twin_caption)
                    assert swapped[:3] == ("sequence", b, a)
                    assert swapped[3] == parse(caption)[3]
                    assert sorted(twin_caption.lower().split()) == sorted(caption.lower().split())
        else:
            assert ex.kind == "mix" and ex.preposition in corpus.SIMULTANEOUS
            assert all(p[0] == "together" and {p[1], p[2]} == set(classes) for p in parsed)
            assert parsed[0][3] == ex.preposition
            (_, on1, off1), (_, on2, off2) = ex.events
            assert on1 <= on2 and off2 <= off1 or on2 <= on1 and off1 <= off2, ex.events
        if ex.kind != "pair" or ex.id.startswith("heldout"):
            assert ex.twin_audio is None and ex.twin_captions is None


# ----------------------------------------------------------------------------------------
# Audio against captions.


def test_single_events_are_recognisable(detector, train_examples, heldout_examples):
    assert {e.events[0][0] for e in heldout_examples if e.kind == "single"} \
        == set(corpus.CLASS_NAMES)
    singles = [e for e in train_examples + heldout_examples if e.kind == "single"]
    for ex in singles:
        name, onset, offset = ex.events[0]
        seen = detector.look(ex.audio)
        assert detector.classify(seen) == name, ex.id
        start, end = seen["span"]
        assert abs(start - onset) < 0.06 and onset < end < offset + 0.03, (ex.id, start, end)


def test_pair_order_in_audio_matches_caption(detector, train_examples, heldout_examples):
    checked = 0
    for ex, twin_audio, twin_captions in _pairs_with_twins(train_examples, heldout_examples):
        _, first, second, _ = parse(ex.caption)
        _, twin_first, twin_second, _ = parse(twin_captions[0])
        assert (twin_first, twin_second) == (second, first)
        (_, onset, _), (_, _, offset) = ex.events
        for audio, order in ((ex.audio, (first, second)), (twin_audio, (second, first))):
            seen = detector.look(audio)
            assert detector.order_margin(seen, *order) > 0.05, ex.id   # seen >= 0.23
            start, end = seen["span"]
            assert abs(start - onset) < 0.06 and end < offset + 0.03, (ex.id, start, end)
        checked += 1
    assert checked > 150


def test_twin_is_the_same_events_swapped(train_examples, heldout_examples):
    by_id = {e.id: e for e in heldout_examples}
    for ex, twin_audio, _ in _pairs_with_twins(train_examples, heldout_examples):
        (a, a_on, a_off), (b, b_on, b_off) = ex.events
        def s(t):
            return int(round(t * SR))

        start, end = s(a_on), s(b_off)
        n_a, n_b, overlap = s(a_off) - s(a_on), s(b_off) - s(b_on), s(a_off) - s(b_on)
        if ex.twin is not None:
            assert by_id[ex.twin].events == [
                (b, a_on, (start + n_b) / SR), (a, (start + n_b - overlap) / SR, b_off)]
        # Same background: bit-identical wherever neither event sounds.
        outside = np.r_[0:start, end:CONFIG.clip_samples]
        np.testing.assert_array_equal(ex.audio[outside], twin_audio[outside])
        noise = np.mean(ex.audio[outside].astype(np.float64) ** 2)
        # Each event, where it sounds alone in both clips, is the same signal moved in time:
        # the clips differ there by two stretches of background only.
        a_twin, b_twin = start + n_b - overlap, start
        for at, at_twin, n in ((start, a_twin, n_a), (s(b_on), b_twin, n_b)):
            k = np.arange(overlap, n - overlap)
            here = ex.audio[at + k].astype(np.float64)
            there = twin_audio[at_twin + k].astype(np.float64)
            residual = np.mean((here - there) ** 2)
            assert residual < 5 * noise, (ex.id, residual, noise)   # expected: 2x
            assert np.mean(here ** 2) > 10 * residual, ex.id


def test_mixes_hold_both_events(detector, heldout_examples, train_examples):
    """Over the overlap, each named class shows energy in the bands that it alone fills.

    Directions where one class has no such bands (e.g. white noise covers a hiss) are not
    checkable this way and are counted; classes not in the mix serve as negative controls.
    """
    present, absent, unchecked = [], [], 0
    mixes = [e for e in heldout_examples + train_examples if e.kind == "mix"]
    for ex in mixes:
        (x, x_on, x_off), (y, y_on, y_off) = ex.events
        seen = detector.look(ex.audio)
        overlap = detector.excess(seen, max(x_on, y_on) + 0.1, min(x_off, y_off) - 0.1)
        for name, other in ((x, y), (y, x)):
            bands = detector.signature(name, [other])
            if bands.any():
                present.append((overlap[bands].mean(), ex.id, name))
            else:
                unchecked += 1
        for name in set(corpus.CLASS_NAMES) - {x, y}:
            bands = detector.signature(name, [x, y])
            if bands.any():
                absent.append((overlap[bands].mean(), ex.id, name))
        start, end = seen["span"]
        assert abs(start - min(x_on, y_on)) < 0.06 and end < max(x_off, y_off) + 0.03, ex.id
    assert unchecked < len(present), (unchecked, len(present))
    assert min(present)[0] > 5, min(present)   # seen >= 9.8 dB over seeds 0-6
    assert max(absent)[0] < 5, max(absent)     # seen <= 2.3 dB


# ----------------------------------------------------------------------------------------
# The held-out split.


def test_heldout_layout(heldout_examples):
    assert len(heldout_examples) == CONFIG.heldout_size
    assert len({e.id for e in heldout_examples}) == len(heldout_examples)
    by_id = {e.id: e for e in heldout_examples}
    pairs = [e for e in heldout_examples if e.kind == "pair"]
    for i, ex in enumerate(heldout_examples):
        if ex.kind != "pair":
            assert ex.twin is None
            continue
        twin = by_id[ex.twin]
        assert twin.twin == ex.id and twin.kind == "pair" and twin.preposition == ex.preposition
        assert [n for n, _, _ in twin.events] == [n for n, _, _ in ex.events][::-1]
        assert twin.events[0][1] == ex.events[0][1] and twin.events[1][2] == ex.events[1][2]
    # Each pair is followed by its twin.
    for first, second in zip(pairs[::2], pairs[1::2]):
        assert first.twin == second.id
    prepositions = collections.Counter(e.preposition for e in pairs)
    assert set(prepositions) == set(corpus.PREPOSITIONS)
    assert max(prepositions.values()) - min(prepositions.values()) <= 2
    kinds = collections.Counter(e.kind for e in heldout_examples)
    assert kinds["mix"] > 0 and kinds["single"] >= len(corpus.CLASSES)
    singles = collections.Counter(e.events[0][0] for e in heldout_examples if e.kind == "single")
    assert max(singles.values()) - min(singles.values()) <= 1


def test_corpus_imports_without_tensorflow():
    code = ("import sys; from data_pipeline.synthetic_events import corpus; "
            "corpus.heldout(corpus.CorpusConfig(heldout_size=6)); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', "
            "'tensorflow_datasets')]; assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ----------------------------------------------------------------------------------------
# The TFDS builder.


def test_builder_configs():
    from data_pipeline.synthetic_events import SyntheticEvents, make_builder_config

    default = make_builder_config(corpus.CorpusConfig())
    assert default.name == "16000hz" and default is SyntheticEvents.builder_configs["16000hz"]
    assert make_builder_config({"sample_rate": 32000}).name == "32000hz"
    small = make_builder_config(dict(train_size=5))
    other = make_builder_config(dict(train_size=6))
    assert small.name.startswith("16000hz_") and small.name != other.name
    assert small.corpus.train_size == 5
    with pytest.raises(ValueError, match="trian_size"):
        make_builder_config({"trian_size": 5})


def test_builder_round_trip(tmp_path):
    import tensorflow_datasets as tfds

    from data_pipeline.synthetic_events import SyntheticEvents, make_builder_config

    config = corpus.CorpusConfig(train_size=12, heldout_size=10, clip_seconds=2.0)
    builder = SyntheticEvents(config=make_builder_config(config), data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 12
    assert builder.info.splits["heldout"].num_examples == 10
    for split in corpus.SPLITS:
        elements = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(elements) == config.size(split)
        for index, el in enumerate(elements):
            ex = corpus.example(split, index, config)   # stored in index order
            assert el["id"].decode() == ex.id
            assert el["audio"].dtype == np.int16 and el["audio"].shape == (config.clip_samples,)
            np.testing.assert_allclose(el["audio"] / 32768.0, ex.audio, atol=1.01 / 32768)
            assert [c.decode() for c in el["captions"]] == ex.captions
            assert el["kind"].decode() == ex.kind
            assert el["preposition"].decode() == (ex.preposition or "")
            assert el["twin"].decode() == (ex.twin or "")
            assert [x.decode() for x in el["events"]["label"]] == [n for n, _, _ in ex.events]
            np.testing.assert_allclose(el["events"]["onset"], [e[1] for e in ex.events],
                                       rtol=1e-6)
            assert el["twin_audio"].dtype == np.int16
            if ex.twin_audio is None:
                assert el["twin_audio"].shape == (0,) and len(el["twin_captions"]) == 0
            else:
                np.testing.assert_allclose(el["twin_audio"] / 32768.0, ex.twin_audio,
                                           atol=1.01 / 32768)
                assert [c.decode() for c in el["twin_captions"]] == ex.twin_captions
