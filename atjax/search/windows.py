"""How audio becomes an index's windows: decoding (the `data` extra) and cutting a signal,
whole or as it decodes block by block, into overlapping windows of a fixed length.

Windows start every hop; the last one ends exactly at the end of the signal, so a file's
tail is never missed, and a signal shorter than a window is one window padded with
silence. A window shorter than the audio network's minimum (possible with a short
--window) is padded again, to that minimum, by the model's `embed_audio`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def audio_lib():
    """data_pipeline.audio, or a RuntimeError that names the extra to install."""
    try:  # lazy: soundfile/soxr are only needed to decode
        from data_pipeline import audio
    except ImportError as e:
        raise RuntimeError(f"decoding audio needs the data extra: pip install \"atjax[data]\" "
                           f"({e})") from e
    return audio


def window_starts(num_samples: int, window: int, hop: int) -> np.ndarray:
    """Window start offsets (samples) covering [0, num_samples).

    Windows start every `hop`; if the last one stops short of the end, one more window
    ending exactly at the end is added, so the tail of a file is never missed. A signal of
    at most one window gives the single start 0 (the caller pads it).
    """
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be at least one sample, got {window}, {hop}")
    if num_samples <= window:
        return np.zeros(1, np.int64)
    starts = np.arange(0, num_samples - window + 1, hop, dtype=np.int64)
    if starts[-1] + window < num_samples:
        starts = np.append(starts, num_samples - window)
    return starts


def window(wave: np.ndarray, start: int, length: int) -> np.ndarray:
    piece = wave[start:start + length]
    return piece if len(piece) == length else np.pad(piece, (0, length - len(piece)))


class Windower:
    """The windows of a signal that arrives in blocks, as `window_starts` and `window` cut
    the whole signal, holding only the last window's worth of it between blocks.

    `frames(blocks)` yields (start sample, float32 frame); once it is exhausted, `samples`
    is the signal's length. An error raised by `blocks` comes out of `frames` unchanged.
    """

    def __init__(self, length: int, hop: int):
        if length < 1 or hop < 1:
            raise ValueError(f"window and hop must be at least one sample, got {length}, {hop}")
        self.length = length
        self.hop = hop
        self.samples = 0

    def frames(self, blocks) -> Iterator[tuple[int, np.ndarray]]:
        buf, buf_start = np.zeros(0, np.float32), 0   # the signal from sample buf_start on
        next_start, last = 0, None
        for block in blocks:
            buf = np.concatenate([buf, np.asarray(block, np.float32)])
            self.samples += len(block)
            while next_start + self.length <= self.samples:
                lo = next_start - buf_start
                yield next_start, buf[lo:lo + self.length].copy()
                last, next_start = next_start, next_start + self.hop
            # Keep what the next window needs, or the last `length` samples: the tail
            # window that ends at the very end of the signal starts there at the earliest.
            keep = max(buf_start, min(next_start, self.samples - self.length))
            buf, buf_start = buf[keep - buf_start:], keep
        if self.samples == 0:
            return
        if last is None:  # shorter than a window: one window, padded with silence
            yield 0, window(buf, 0, self.length).astype(np.float32, copy=True)
        elif last + self.length < self.samples:
            yield self.samples - self.length, buf[len(buf) - self.length:].copy()
