"""A small deterministic stand-in for the embedder that atjax.load returns, for the
evaluation tests (tests/test_evaluate.py, tests/test_report.py).

It understands a toy world of tones: each sound word names a frequency. Audio: the energy
near each tone's frequency in the first and the second half of the clip, as two
distributions; text: the sound words in the order the sentence states ("A after B" puts B
first), or both at once for "as"/"while". With `order_aware=False` the audio halves are
averaged, so a clip and its reversed-order twin embed identically.
"""

from __future__ import annotations

import re

import numpy as np

SOUNDS = {"hum": 150.0, "buzz": 450.0, "beep": 1000.0, "whistle": 2200.0, "chime": 4000.0,
          "squeal": 6500.0}
NAMES = tuple(SOUNDS)
_WORD = re.compile(r"\b(" + "|".join(NAMES) + r")s?\b", re.IGNORECASE)
_CONST = 0.05   # a constant dimension: no embedding is ever all-zero


def tone(name: str, seconds: float, sample_rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * SOUNDS[name] * t)).astype(np.float32)


def sequence(names, seconds: float, sample_rate: int) -> np.ndarray:
    """Tones one after the other, each `seconds` long."""
    return np.concatenate([tone(n, seconds, sample_rate) for n in names])


def together(names, seconds: float, sample_rate: int) -> np.ndarray:
    return np.sum([tone(n, seconds, sample_rate) for n in names], axis=0).astype(np.float32)


class ToneEmbedder:
    def __init__(self, *, sample_rate: int = 16000, order_aware: bool = True,
                 chunk_seconds: float | None = None, config=None):
        self.sample_rate = sample_rate
        self.order_aware = order_aware
        self.chunk_seconds = chunk_seconds
        self.config = config
        self.audio_calls: list[tuple[int, ...]] = []
        self.text_calls: list[int] = []

    def _half(self, x: np.ndarray, sample_rate: int) -> np.ndarray:
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(x.size, 1 / sample_rate)
        energy = np.array([spectrum[np.abs(freqs - f) <= 0.1 * f].sum() for f in SOUNDS.values()])
        return energy / max(energy.sum(), 1e-3)

    def embed_audio(self, waveforms, sample_rate: int) -> np.ndarray:
        waveforms = np.asarray(waveforms, np.float32)
        assert waveforms.ndim == 2, waveforms.shape
        if self.chunk_seconds:
            chunk = int(round(self.chunk_seconds * sample_rate))
            assert waveforms.shape[1] % chunk == 0, "clip not padded to whole chunks"
        self.audio_calls.append(waveforms.shape)
        out = []
        for w in waveforms:
            h1, h2 = self._half(w[:w.size // 2], sample_rate), self._half(w[w.size // 2:],
                                                                           sample_rate)
            if not self.order_aware:
                h1 = h2 = (h1 + h2) / 2
            out.append(np.concatenate([h1, h2, [_CONST]]))
        out = np.array(out)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def text_vector(self, text: str) -> np.ndarray:
        words = [m.group(1).lower() for m in _WORD.finditer(text)]
        first, second = np.zeros(len(NAMES)), np.zeros(len(NAMES))
        if len(words) == 1:
            first[NAMES.index(words[0])] = second[NAMES.index(words[0])] = 1
        elif len(words) >= 2:
            a, b = words[0], words[1]
            if re.search(r"\bafter\b", text, re.IGNORECASE):
                a, b = b, a
            if re.search(r"\b(as|while|with)\b", text, re.IGNORECASE):
                first[NAMES.index(a)] = first[NAMES.index(b)] = 0.5
                second[:] = first
            else:
                first[NAMES.index(a)], second[NAMES.index(b)] = 1, 1
        v = np.concatenate([first, second, [_CONST]])
        return v / np.linalg.norm(v)

    def embed_text(self, texts) -> np.ndarray:
        texts = list(texts)
        self.text_calls.append(len(texts))
        return np.array([self.text_vector(t) for t in texts], np.float32)
