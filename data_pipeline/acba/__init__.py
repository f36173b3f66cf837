"""ACBA (AudioCaps-BeforeAfter): two captioned clips joined in time, with a sentence that
states their order (paper, Sec. 3.3; facts from the authors' preposition-synthesis script).

The recipe:
- the pool is the captions that contain none of "before", "after", "then", "followed by"
  (a lower-cased substring test, as in the authors' script, so "afternoon" or "strengthen"
  also rule a caption out; kept for fidelity);
- two different clips are drawn; the audio is always clip 1 then clip 2, overlapped by a
  linear cross-fade (default 1 s): clip 1 fades out over its last second while clip 2 fades
  in over its first;
- one preposition is drawn uniformly from the four; the sentence is "{s1} {prep} {s2}",
  except "{s2} after {s1}", so it always states the true order.

Choices this module makes (the paper does not say):
- Sentences: each part is whitespace-collapsed, loses its trailing sentence punctuation
  (". ! ? , ; :", so "A dog barks." does not leave "barks. before") and is lower-cased; the
  sentence's first character is then upper-cased. No final period is added: the pool,
  AudioCaps, writes its captions without one, and ACBA sentences keep that style.
- Ramps: the fade gains are sample-centred, g_in[i] = (i + 0.5) / F and g_out = 1 - g_in,
  so the two gains sum to 1 at every overlapped sample and reversing time maps the
  fade-out onto the fade-in exactly.
- A clip shorter than the cross-fade: the fade shortens to the shorter clip's length
  (F = min(F, len1, len2)); a clip of zero samples is an error.
- Length: training clips have a fixed length L. The authors wrote ~19 s pairs zero-padded
  to 20 s; cropping such a pair to L would cut one event off and leave a false caption.
  Instead each part is cropped (at a random position) so that the cross-faded result is
  exactly L: the parts get ceil((L + F) / 2) and floor((L + F) / 2) samples, and a part
  shorter than its share keeps all of itself while the other part gets the rest
  (`part_lengths`). Parts that together fit are kept whole and the result is zero-padded.

`crossfade`, `join_captions`, `fit_pair` are the numpy reference; `fit_pair_tf` and
`crop_offset_tf` are the same arithmetic in TensorFlow for the training pipeline
(tests check the two agree). This module imports neither TensorFlow (until a `_tf`
function runs) nor the rest of the pipeline, so evaluation can build ACBA pairs without
them. The package's other modules:
- `pairs`: the ACBA pool of a training source and the tf.data stream of pairs drawn from
  it, as training synthesises them;
- `stored`: a fixed ACBA set on disk (wav files + `acba.csv`) and `load_written`, which
  reads it back as a source;
- `writer`: `python -m data_pipeline.acba write ...` materialises such a set (the
  paper's 50k) from the pairs stream.
"""

from __future__ import annotations

import math

import numpy as np

PREPOSITIONS = ("before", "after", "then", "followed by")

# Trailing characters that end a caption as a sentence; dropped so a part can be a clause.
_SENTENCE_END = " \t\n.!?,;:"


# ---------------------------------------------------------------------------------------
# Text


def eligible(caption: str) -> bool:
    """True if `caption` may be an ACBA part: it names no order already (substring test)."""
    lowered = caption.lower()
    return not any(p in lowered for p in PREPOSITIONS)


def clause(caption: str) -> str:
    """A caption as the lower-case clause it becomes inside an ACBA sentence."""
    text = " ".join(caption.split()).rstrip(_SENTENCE_END).lower()
    if not text:
        raise ValueError(f"caption {caption!r} is empty once its trailing punctuation is removed")
    return text


def capitalise(text: str) -> str:
    """Upper-cases the first character only (str.capitalize would lower-case the rest)."""
    return text[:1].upper() + text[1:]


def join_captions(first: str, second: str, preposition: str) -> str:
    """The sentence for `first`'s audio followed by `second`'s.

    >>> join_captions("A dog barks.", "A car passes", "after")
    'A car passes after a dog barks'
    """
    if preposition not in PREPOSITIONS:
        raise ValueError(f"preposition {preposition!r} is not one of {PREPOSITIONS}")
    s1, s2 = clause(first), clause(second)
    if preposition == "after":
        return capitalise(f"{s2} after {s1}")
    return capitalise(f"{s1} {preposition} {s2}")


# ---------------------------------------------------------------------------------------
# Audio (numpy reference)


def fade_samples(sample_rate: int, seconds: float) -> int:
    if seconds < 0:
        raise ValueError(f"cross-fade length must be >= 0 seconds, got {seconds}")
    return int(round(seconds * sample_rate))


def _mono(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"{name} clip must be 1-D mono samples, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} clip has no samples")
    return x


def _crossfade(x: np.ndarray, y: np.ndarray, fade: int) -> np.ndarray:
    f = min(fade, x.size, y.size)
    out = np.empty(x.size + y.size - f, np.float32)
    head = x.size - f
    out[:head] = x[:head]
    g = (np.arange(f, dtype=np.float32) + np.float32(0.5)) / np.float32(max(f, 1))
    out[head:x.size] = x[head:] * (np.float32(1) - g) + y[:f] * g
    out[x.size:] = y[f:]
    return out


def crossfade(first, second, sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    """`first` then `second` (float32 mono), overlapped by a linear cross-fade of `seconds`.

    The result has len(first) + len(second) - F samples, F = min(round(seconds *
    sample_rate), len(first), len(second)).
    """
    return _crossfade(_mono(first, "first"), _mono(second, "second"), fade_samples(sample_rate, seconds))


def part_lengths(first_len: int, second_len: int, clip_samples: int | None, fade: int) -> tuple[int, int, int]:
    """(samples kept of the first clip, of the second, cross-fade samples) so that the
    cross-faded pair has at most `clip_samples` samples (exactly that when the clips are
    long enough). `clip_samples=None` keeps both clips whole."""
    f = min(fade, first_len, second_len)
    if clip_samples is None:
        return first_len, second_len, f
    f = min(f, clip_samples)
    budget = clip_samples + f
    share1 = (budget + 1) // 2
    share2 = budget - share1
    if first_len < share1:
        return first_len, min(second_len, budget - first_len), f
    if second_len < share2:
        return min(first_len, budget - second_len), second_len, f
    return share1, share2, f


def crop_offset(n: int, length: int, fraction: float) -> int:
    """Start of a `length`-sample window in `n` samples for a uniform `fraction` in [0, 1)."""
    room = n - length
    return min(int(math.floor(float(fraction) * (room + 1))), room) if room > 0 else 0


def fit_pair(first, second, *, clip_samples: int | None, fade: int,
             first_fraction: float = 0.0, second_fraction: float = 0.0) -> np.ndarray:
    """The ACBA audio of the training pipeline: each part cropped per `part_lengths` at the
    window picked by its fraction, cross-faded, zero-padded to `clip_samples`."""
    x, y = _mono(first, "first"), _mono(second, "second")
    p1, p2, f = part_lengths(x.size, y.size, clip_samples, fade)
    o1, o2 = crop_offset(x.size, p1, first_fraction), crop_offset(y.size, p2, second_fraction)
    out = _crossfade(x[o1:o1 + p1], y[o2:o2 + p2], f)
    if clip_samples is not None and out.size < clip_samples:
        out = np.pad(out, (0, clip_samples - out.size))
    return out


# ---------------------------------------------------------------------------------------
# Audio (TensorFlow: the same arithmetic, in the tf.data graph)


def crop_offset_tf(n, length, fraction):
    import tensorflow as tf

    room = tf.cast(n, tf.int64) - tf.cast(length, tf.int64)
    offset = tf.cast(tf.floor(tf.cast(fraction, tf.float64) * tf.cast(room + 1, tf.float64)), tf.int64)
    return tf.maximum(tf.minimum(offset, room), 0)


def fit_pair_tf(first, second, *, clip_samples: int | None, fade: int, first_fraction, second_fraction):
    """`fit_pair` on 1-D tensors inside a tf.data map (no Python per sample). int16 PCM is
    scaled by 1/32768 after cropping, so only the kept samples are converted."""
    import tensorflow as tf

    def as_float(pcm):
        return tf.cast(pcm, tf.float32) / 32768.0 if pcm.dtype == tf.int16 else tf.cast(pcm, tf.float32)

    n1 = tf.shape(first, out_type=tf.int64)[0]
    n2 = tf.shape(second, out_type=tf.int64)[0]
    f = tf.minimum(tf.minimum(tf.constant(fade, tf.int64), n1), n2)
    if clip_samples is None:
        p1, p2 = n1, n2
    else:
        f = tf.minimum(f, clip_samples)
        budget = clip_samples + f
        share1 = (budget + 1) // 2
        share2 = budget - share1
        p1 = tf.where(n1 < share1, n1, tf.where(n2 < share2, tf.minimum(n1, budget - n2), share1))
        p2 = tf.where(n1 < share1, tf.minimum(n2, budget - n1), tf.where(n2 < share2, n2, share2))
    o1 = crop_offset_tf(n1, p1, first_fraction)
    o2 = crop_offset_tf(n2, p2, second_fraction)
    x = as_float(first[o1:o1 + p1])
    y = as_float(second[o2:o2 + p2])
    g = (tf.range(f, dtype=tf.float32) + 0.5) / tf.cast(tf.maximum(f, 1), tf.float32)
    mixed = x[p1 - f:] * (1.0 - g) + y[:f] * g
    out = tf.concat([x[:p1 - f], mixed, y[f:]], axis=0)
    if clip_samples is not None:
        out = tf.pad(out, [[0, clip_samples - tf.shape(out, out_type=tf.int64)[0]]])
        out = tf.ensure_shape(out, [clip_samples])
    return out
