"""The built-in synthetic sound-event corpus: procedural audio with captions that state order.

The paper asks whether an audio-text model can tell "A before B" from "B before A" and whether
temporal pooling is what stops it. Its datasets need manual downloads and GPUs; this corpus
poses the same question with audio that is generated on the fly, so anyone (and CI) can train
and probe a model on a laptop. Every example is a pure function of `(seed, split, index)`:
pipelines can read it in any order and resume anywhere, and the same numpy gives the same bytes.

Three kinds of example:
  single  one event, captioned by a phrase of its class ("A high beep");
  pair    two events one after the other, joined by a short cross-fade, captioned with
          "before" / "after" / "then" / "followed by" so that the sentence states the true
          order ("B after A" when A comes first);
  mix     two events sounding together, captioned with "as" / "while" / "with".

A pair's reversed-order twin holds the same two event signals swapped in time, over the same
background and span, so that the only difference between the two clips is the order. Train
pairs carry their twin inline (a hard negative for `batches="order_hard"`); the held-out split
lists each pair followed by its twin so that order probes can compare the two.

The event classes (synthesis and phrases) are in `event_classes`.

Numpy only: the evaluators generate the held-out split on machines without TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from data_pipeline.synthetic_events import event_classes
# CLASSES, CLASS_NAMES and EventClass are the corpus's vocabulary: callers read them here.
from data_pipeline.synthetic_events.event_classes import CLASS_NAMES, CLASSES, EventClass  # noqa: F401

PREPOSITIONS = ("before", "after", "then", "followed by")   # sequential captions of pairs
SIMULTANEOUS = ("as", "while")                                # main captions of mixes
SPLITS = ("train", "heldout")

# Event levels and edges (each class's own variation is in event_classes).
_EVENT_DB = (-28.0, -16.0)        # event RMS in dBFS, unless the peak cap below lowers it
_EVENT_PEAK = 0.42                # two events plus background stay below full scale
_BACKGROUND_DB = (-55.0, -42.0)   # background RMS in dBFS: audible, always well below events
_BACKGROUND_EXPONENT = (0.0, 2.0)  # background power ~ 1/f^exponent: white .. brown
_MIN_RAMP_SECONDS = 0.005         # shortest fade at an event's ends, to avoid clicks

# Event durations as fractions of the clip, so the same layouts scale with clip_seconds. A
# pair's two events (each 0.2-0.4 clip) fill at most 0.8 clip, leaving room to move the pair
# around; in 3 s clips each event lasts 0.6-1.2 s, about one 0.5-1 s Transformer chunk.
_SINGLE_FRACTION = (0.2, 0.6)
_PAIR_FRACTION = (0.2, 0.4)
_MIX_LONG_FRACTION = (0.4, 0.7)
_MIX_SHORT_OF_LONG = (0.6, 0.9)   # the shorter event of a mix lies wholly inside the longer
_MARGIN_FRACTION = 0.02           # silence (background only) kept at both ends of the clip

_SPLIT_IDS = {"train": 0, "heldout": 1}
_KIND_IDS = {"single": 0, "mix": 1, "pair": 2}


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """What the corpus is: audio format, sizes and the mix of example kinds.

    Singles make up the `1 - pair_fraction - mix_fraction` rest. A held-out split of
    `heldout_size` uses the same fractions, rounded so that pairs come with their twins.
    """

    sample_rate: int = 16000
    clip_seconds: float = 3.0
    crossfade_seconds: float = 0.1
    seed: int = 0
    train_size: int = 2000
    heldout_size: int = 560
    pair_fraction: float = 0.5
    mix_fraction: float = 0.2

    def __post_init__(self):
        # Normalised types: equal settings give equal configs, hence one prepared dataset.
        for name in ("sample_rate", "seed", "train_size", "heldout_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"CorpusConfig.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("clip_seconds", "crossfade_seconds", "pair_fraction", "mix_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"CorpusConfig.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.sample_rate < 16000:
            # The hiss class reaches 7.5 kHz; lower rates would alias it onto other classes.
            raise ValueError(f"CorpusConfig.sample_rate must be >= 16000, got {self.sample_rate}")
        if self.train_size < 0 or self.heldout_size < 0:
            raise ValueError("CorpusConfig.train_size and heldout_size must be >= 0")
        if not (0 <= self.pair_fraction <= 1 and 0 <= self.mix_fraction <= 1
                and self.pair_fraction + self.mix_fraction <= 1):
            raise ValueError("CorpusConfig.pair_fraction and mix_fraction must lie in [0, 1] and "
                             f"sum to at most 1, got {self.pair_fraction} + {self.mix_fraction}")
        if self.crossfade_seconds < 0:
            raise ValueError(f"CorpusConfig.crossfade_seconds must be >= 0, got "
                             f"{self.crossfade_seconds}")
        shortest_event = _PAIR_FRACTION[0] * self.clip_seconds
        if shortest_event < 2 * max(self.crossfade_seconds, _MIN_RAMP_SECONDS) + 0.05:
            raise ValueError(
                f"CorpusConfig.clip_seconds={self.clip_seconds} is too short for "
                f"crossfade_seconds={self.crossfade_seconds}: the shortest event of a pair "
                f"({shortest_event:.3f} s) must hold a fade at each end plus 50 ms")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | CorpusConfig) -> CorpusConfig:
        """From a dict or `ml_collections.ConfigDict` of fields; an unknown key is an error."""
        if isinstance(mapping, cls):
            return mapping
        if not hasattr(mapping, "items"):
            raise TypeError(f"expected a mapping of CorpusConfig fields, got {type(mapping)}")
        values = dict(mapping.items())
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown synthetic corpus setting(s) {unknown}; known: {known}")
        return cls(**values)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def size(self, split: str) -> int:
        _check_split(split)
        return self.train_size if split == "train" else self.heldout_size


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic corpus split {split!r}; splits: {list(SPLITS)}")


# --------------------------------------------------------------------------------------------
# Captions


def _part(phrase: str) -> str:
    phrase = phrase.strip()
    # Lower-case a leading capital unless the word is an acronym ("TV hum").
    if len(phrase) > 1 and phrase[0].isupper() and not phrase[1].isupper():
        phrase = phrase[0].lower() + phrase[1:]
    return phrase


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def caption_pair(first: str, second: str, preposition: str) -> str:
    """A sentence saying that `first` happens and then `second` (phrases of the two events).

    "after" names the later event first, so the text always states the true order:
    caption_pair("a beep", "a hum", "after") == "A hum after a beep".
    """
    first, second = _part(first), _part(second)
    if not first or not second:
        raise ValueError(f"caption_pair needs two non-empty phrases, got {first!r}, {second!r}")
    if preposition == "after":
        return _sentence(f"{second} after {first}")
    if preposition in PREPOSITIONS:
        return _sentence(f"{first} {preposition} {second}")
    raise ValueError(f"unknown sequential preposition {preposition!r}; use one of {PREPOSITIONS}")


def _caption_mix(a: str, b: str, word: str) -> str:
    # "as" and "while" join clauses ("a bell rings as a siren wails"); "with" joins nouns.
    return _sentence(f"{_part(a)} {word} {_part(b)}")


# --------------------------------------------------------------------------------------------
# Examples


@dataclasses.dataclass
class Example:
    """One clip of the corpus. `events`: (class name, onset s, offset s) in time order, the
    span of each event including its fades."""

    id: str
    audio: np.ndarray            # float32 mono, exactly config.clip_samples samples
    caption: str                 # the main caption (== captions[0])
    captions: list[str]
    kind: str                    # "single" | "pair" | "mix"
    events: list[tuple[str, float, float]]
    twin: str | None = None      # id of the reversed-order twin (held-out pairs)
    preposition: str | None = None   # of the main caption (pairs and mixes)
    twin_audio: np.ndarray | None = None   # train pairs: the other order, same timing
    twin_captions: list[str] | None = None  # [i]: captions[i] with the two events swapped


@dataclasses.dataclass(frozen=True)
class _Placed:
    cls: EventClass
    onset: int        # sample index in the clip
    signal: np.ndarray


def _rng(config: CorpusConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, *key]))


def _event_signal(cls: EventClass, rng: np.random.Generator, n: int,
                  config: CorpusConfig) -> np.ndarray:
    """The event at a random level with linear fades; the fade length is the cross-fade."""
    raw = cls.render(rng, n, config.sample_rate)
    rms = np.sqrt(np.mean(raw ** 2))
    if not np.isfinite(rms) or rms == 0:
        raise RuntimeError(f"event class {cls.name} rendered silence or NaN ({n} samples)")
    # Impulsive classes (knocks, bell strikes) have high crest factors: their level is set by
    # RMS as for the others, but lowered where needed so that no mix of two events can clip.
    gain = min(10 ** (rng.uniform(*_EVENT_DB) / 20) / rms, _EVENT_PEAK / np.max(np.abs(raw)))
    # Every event fades in and out over the cross-fade, wherever it sits: a pair's events are
    # then the same signals in either order (exact twins), and the fades reveal nothing about
    # whether an event belongs to a pair.
    ramp = min(max(int(round(config.crossfade_seconds * config.sample_rate)),
                   int(round(_MIN_RAMP_SECONDS * config.sample_rate)), 1), n // 2)
    envelope = np.ones(n)
    fade = (np.arange(ramp) + 0.5) / ramp
    envelope[:ramp] = fade
    envelope[n - ramp:] = fade[::-1]
    return raw * gain * envelope


def _background(rng: np.random.Generator, config: CorpusConfig) -> np.ndarray:
    n = config.clip_samples
    noise = event_classes.noise(rng, n, config.sample_rate, exponent=rng.uniform(*_BACKGROUND_EXPONENT))
    level = 10 ** (rng.uniform(*_BACKGROUND_DB) / 20)
    return noise * (level / np.sqrt(np.mean(noise ** 2)))


def _mix_down(background: np.ndarray, placed: list[_Placed]) -> np.ndarray:
    out = background.copy()
    for p in placed:
        out[p.onset:p.onset + len(p.signal)] += p.signal
    # Levels are chosen so that this never clips; the clip is a guard, not a limiter.
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _events(placed: list[_Placed], sample_rate: int) -> list[tuple[str, float, float]]:
    ordered = sorted(placed, key=lambda p: p.onset)
    return [(p.cls.name, p.onset / sample_rate, (p.onset + len(p.signal)) / sample_rate)
            for p in ordered]


def _duration(rng, fraction_range, config: CorpusConfig) -> int:
    return int(round(rng.uniform(*fraction_range) * config.clip_samples))


def _onset(rng, length: int, config: CorpusConfig) -> int:
    margin = int(round(_MARGIN_FRACTION * config.clip_samples))
    latest = max(margin, config.clip_samples - margin - length)
    return int(rng.integers(margin, latest + 1))


def _streams(config: CorpusConfig, *key: int) -> list[np.random.Generator]:
    """Independent streams for layout, captions, event 1, event 2 and background.

    Separate streams keep each event's signal independent of the other draws, so a pair and
    its twin (same key, other order) synthesise bit-identical events and background.
    """
    children = np.random.SeedSequence([config.seed, *key]).spawn(5)
    return [np.random.default_rng(c) for c in children]


def _single(key, cls: EventClass, config: CorpusConfig, example_id: str) -> Example:
    layout, words, ev, _, bg = _streams(config, *key)
    n = _duration(layout, _SINGLE_FRACTION, config)
    placed = [_Placed(cls, _onset(layout, n, config), _event_signal(cls, ev, n, config))]
    captions = [_sentence(cls.phrases[i])
                for i in words.choice(len(cls.phrases), size=3, replace=False)]
    return Example(id=example_id, audio=_mix_down(_background(bg, config), placed),
                   caption=captions[0], captions=captions, kind="single",
                   events=_events(placed, config.sample_rate))


def _mix(key, a: EventClass, b: EventClass, config: CorpusConfig, example_id: str) -> Example:
    layout, words, ev_a, ev_b, bg = _streams(config, *key)
    n_long = _duration(layout, _MIX_LONG_FRACTION, config)
    n_short = int(round(layout.uniform(*_MIX_SHORT_OF_LONG) * n_long))
    long_onset = _onset(layout, n_long, config)
    short_onset = long_onset + int(layout.integers(0, n_long - n_short + 1))
    a_is_long = bool(layout.integers(2))
    n_a, on_a = (n_long, long_onset) if a_is_long else (n_short, short_onset)
    n_b, on_b = (n_short, short_onset) if a_is_long else (n_long, long_onset)
    placed = [_Placed(a, on_a, _event_signal(a, ev_a, n_a, config)),
              _Placed(b, on_b, _event_signal(b, ev_b, n_b, config))]
    word = SIMULTANEOUS[int(words.integers(len(SIMULTANEOUS)))]
    other = SIMULTANEOUS[1 - SIMULTANEOUS.index(word)]
    def clause(c):
        return c.clauses[int(words.integers(len(c.clauses)))]

    def noun(c):
        return c.captions[int(words.integers(len(c.captions)))]

    captions = [_caption_mix(clause(a), clause(b), word),
                _caption_mix(clause(b), clause(a), other),
                _caption_mix(noun(a), noun(b), "with")]
    return Example(id=example_id, audio=_mix_down(_background(bg, config), placed),
                   caption=captions[0], captions=captions, kind="mix",
                   events=_events(placed, config.sample_rate), preposition=word)


def _pair_captions(words: np.random.Generator, first: EventClass, second: EventClass,
                   prepositions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """One caption per preposition in true order, and the same words in the other order."""
    captions, swapped = [], []
    for prep in prepositions:
        # Both parts are noun phrases or both clauses, so a clause swap stays grammatical;
        # "followed by" takes a noun phrase ("a hum followed by a beep").
        use_clauses = prep != "followed by" and bool(words.integers(2))
        def pick(c):
            phrases = c.clauses if use_clauses else c.captions
            return phrases[int(words.integers(len(phrases)))]

        p1, p2 = pick(first), pick(second)
        captions.append(caption_pair(p1, p2, prep))
        swapped.append(caption_pair(p2, p1, prep))
    return captions, swapped


def _pair(key, first: EventClass, second: EventClass, preposition: str, config: CorpusConfig,
          example_id: str) -> tuple[Example, Example]:
    """The pair (first, then second) and its reversed twin, which shares every random draw."""
    layout, words, ev_1, ev_2, bg = _streams(config, *key)
    n1 = _duration(layout, _PAIR_FRACTION, config)
    n2 = _duration(layout, _PAIR_FRACTION, config)
    overlap = int(round(config.crossfade_seconds * config.sample_rate))
    start = _onset(layout, n1 + n2 - overlap, config)
    s1 = _event_signal(first, ev_1, n1, config)
    s2 = _event_signal(second, ev_2, n2, config)
    background = _background(bg, config)
    placed = [_Placed(first, start, s1), _Placed(second, start + n1 - overlap, s2)]
    # The twin: the same signals swapped in time, the pair's span and background unchanged.
    twin_placed = [_Placed(second, start, s2), _Placed(first, start + n2 - overlap, s1)]
    order = (preposition,) + tuple(p for p in PREPOSITIONS if p != preposition)
    captions, twin_captions = _pair_captions(words, first, second, order)
    pair = Example(id=example_id, audio=_mix_down(background, placed), caption=captions[0],
                   captions=captions, kind="pair", events=_events(placed, config.sample_rate),
                   preposition=preposition)
    twin = Example(id=example_id, audio=_mix_down(background, twin_placed),
                   caption=twin_captions[0], captions=twin_captions, kind="pair",
                   events=_events(twin_placed, config.sample_rate), preposition=preposition)
    return pair, twin


def _train_example(index: int, config: CorpusConfig) -> Example:
    rng = _rng(config, _SPLIT_IDS["train"], index)
    example_id = f"train-{index:06d}"
    draw = rng.uniform()
    key = (_SPLIT_IDS["train"], index, 1)
    if draw < config.pair_fraction:
        i, j = rng.choice(len(CLASSES), size=2, replace=False)
        preposition = PREPOSITIONS[int(rng.integers(len(PREPOSITIONS)))]
        pair, twin = _pair(key, CLASSES[i], CLASSES[j], preposition, config, example_id)
        pair.twin_audio, pair.twin_captions = twin.audio, twin.captions
        return pair
    if draw < config.pair_fraction + config.mix_fraction:
        i, j = rng.choice(len(CLASSES), size=2, replace=False)
        return _mix(key, CLASSES[i], CLASSES[j], config, example_id)
    return _single(key, CLASSES[int(rng.integers(len(CLASSES)))], config, example_id)


@dataclasses.dataclass(frozen=True)
class _HeldoutLayout:
    """How the held-out split's indices divide: singles, then mixes, then (pair, twin)s."""

    singles: int
    mixes: int
    pairs: int   # base pairs; each takes two indices

    @classmethod
    def of(cls, config: CorpusConfig) -> _HeldoutLayout:
        n = config.heldout_size
        pairs = int(n * config.pair_fraction) // 2
        mixes = min(int(round(n * config.mix_fraction)), n - 2 * pairs)
        return cls(singles=n - 2 * pairs - mixes, mixes=mixes, pairs=pairs)


def _class_pairs(config: CorpusConfig, salt: int) -> list[tuple[int, int]]:
    # Every unordered class pair once, in a seeded order, cycled: held-out coverage is even.
    combos = [(i, j) for i in range(len(CLASSES)) for j in range(i + 1, len(CLASSES))]
    order = _rng(config, _SPLIT_IDS["heldout"], salt).permutation(len(combos))
    return [combos[k] for k in order]


def _heldout_example(index: int, config: CorpusConfig) -> Example:
    layout = _HeldoutLayout.of(config)
    split = _SPLIT_IDS["heldout"]
    if index < layout.singles:
        cls = CLASSES[index % len(CLASSES)]
        return _single((split, _KIND_IDS["single"], index), cls, config, f"heldout-{index:06d}")
    j = index - layout.singles
    if j < layout.mixes:
        combos = _class_pairs(config, salt=_KIND_IDS["mix"] + 100)
        a, b = combos[j % len(combos)]
        if _rng(config, split, _KIND_IDS["mix"], j).integers(2):
            a, b = b, a
        return _mix((split, _KIND_IDS["mix"], j), CLASSES[a], CLASSES[b], config,
                    f"heldout-{index:06d}")
    j -= layout.mixes
    base, is_twin = divmod(j, 2)
    combos = _class_pairs(config, salt=_KIND_IDS["pair"] + 100)
    a, b = combos[base % len(combos)]
    if _rng(config, split, _KIND_IDS["pair"], base).integers(2):
        a, b = b, a
    # Round-robin prepositions: each is used equally, so BAT has as many "before" as "after".
    preposition = PREPOSITIONS[base % len(PREPOSITIONS)]
    first_index = index - is_twin
    pair, twin = _pair((split, _KIND_IDS["pair"], base), CLASSES[a], CLASSES[b], preposition,
                       config, f"heldout-{first_index:06d}")
    pair.twin = twin.id = f"heldout-{first_index + 1:06d}"
    twin.twin = pair.id
    return twin if is_twin else pair


def example(split: str, index: int, config) -> Example:
    """Example `index` of `split`: a pure function of (config, split, index).

    `config` is a CorpusConfig or a mapping of its fields.
    """
    config = CorpusConfig.from_mapping(config)
    size = config.size(split)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) \
            or not 0 <= index < size:
        raise IndexError(f"synthetic corpus {split} index {index!r} out of range [0, {size})")
    index = int(index)
    if split == "train":
        return _train_example(index, config)
    return _heldout_example(index, config)


def train(config) -> Iterator[Example]:
    """The train split, `config.train_size` examples in index order."""
    config = CorpusConfig.from_mapping(config)
    for index in range(config.train_size):
        yield _train_example(index, config)


def heldout(config) -> list[Example]:
    """The held-out split: singles of every class in turn, mixes, then each pair and its twin.

    Pair prepositions go round the four in turn; class pairs cycle through every unordered
    combination in a seeded order. Twin ids resolve within the list.
    """
    config = CorpusConfig.from_mapping(config)
    return [example("heldout", i, config) for i in range(config.heldout_size)]

