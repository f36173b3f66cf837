"""Embedding functions of a trained dual encoder: what export bundles serve, what the
trainer's validation and every evaluator call (one code path, so numbers agree).

`Embedder` implements the embedder protocol: `embed_audio(waveforms, sample_rate)` and
`embed_text(texts)`, both returning L2-normalised float32 numpy arrays, plus
`sample_rate`, `chunk_seconds` and `config`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from atjax import loss as loss_lib
from atjax import model as model_lib


def _local(tree):
    """Single-device copies of (possibly multi-host, replicated) arrays. Evaluation then
    runs on each host independently (validation sets are small), with no cross-host
    collectives."""
    device = jax.local_devices()[0]

    def one(x):
        if isinstance(x, jax.Array):
            if not x.is_fully_addressable:
                x = x.addressable_data(0)
            return jax.device_put(x, device)
        return x
    return jax.tree.map(one, tree)


class Embedder:
    def __init__(self, config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                 params: dict, batch_stats: dict, rest: dict, tokenizer,
                 *, batch_size: int = 16):
        self.config = config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.sample_rate = int(config.model.audio.frontend.sample_rate)
        self.chunk_seconds = (float(config.model.chunk_seconds)
                              if config.model.head == "transformer" else None)
        self.clip_seconds = float(config.model.clip_seconds)  # the training clip length
        self._chunk = model_lib.chunk_samples(config.model)
        state = _local((params, batch_stats, rest))

        def audio_fn(state, waveforms):
            model = nnx.merge(graphdef, *state)
            return loss_lib.l2_normalize(model.encode_audio(waveforms))

        def text_fn(state, input_ids, attention_mask):
            model = nnx.merge(graphdef, *state)
            return loss_lib.l2_normalize(model.encode_text(input_ids, attention_mask))

        self._state = state
        self._audio_fn = jax.jit(audio_fn)
        self._text_fn = jax.jit(text_fn)

    @property
    def embed_dim(self) -> int:
        return int(self.config.model.embed_dim)

    def _batched(self, fn, *arrays: np.ndarray) -> np.ndarray:
        """Runs `fn` over fixed-size batches (the last one padded) so that any number of
        inputs compiles one program per input length, not one per count."""
        total = arrays[0].shape[0]
        out = []
        for start in range(0, total, self.batch_size):
            parts = [a[start:start + self.batch_size] for a in arrays]
            n = parts[0].shape[0]
            if n < self.batch_size:
                parts = [np.concatenate([p, np.repeat(p[-1:], self.batch_size - n, 0)])
                         for p in parts]
            out.append(np.asarray(fn(self._state, *parts))[:n])
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    def embed_audio(self, waveforms, sample_rate: int | None = None) -> np.ndarray:
        """`[B, N]` float waveforms (or a list of 1-D arrays of any lengths) -> `[B, D]`.

        Audio at another rate is resampled to the model's. Clips of different lengths are
        embedded in groups of equal length; with the Transformer head each is padded with
        silence to a whole number of chunks.
        """
        sample_rate = self.sample_rate if sample_rate is None else int(sample_rate)
        clips = [np.asarray(w) for w in waveforms]
        for c in clips:
            if not np.issubdtype(c.dtype, np.floating):
                # Integer PCM taken as float is 2**15 times too loud (+90 dB for int16).
                raise TypeError(f"embed_audio expects float waveforms in [-1, 1], got {c.dtype}; "
                                "scale integer PCM by its full scale first (e.g. int16 / 32768)")
        clips = [c.astype(np.float32, copy=False) for c in clips]
        if any(c.ndim != 1 for c in clips):
            raise ValueError("embed_audio expects [B, N] waveforms or a list of 1-D arrays")
        if sample_rate != self.sample_rate:
            from data_pipeline import audio as audio_lib  # lazy: numpy/soxr only
            clips = [audio_lib.resample(c, sample_rate, self.sample_rate) for c in clips]
        if any(c.size == 0 for c in clips):
            raise ValueError("embed_audio got an empty waveform")
        if self._chunk:
            clips = [np.pad(c, (0, -c.size % self._chunk)) for c in clips]
        out = np.zeros((len(clips), self.embed_dim), np.float32)
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_length.setdefault(c.size, []).append(i)
        for indices in by_length.values():
            out[indices] = self._batched(self._audio_fn, np.stack([clips[i] for i in indices]))
        return out

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        tokens = self.tokenizer(texts)
        return self._batched(self._text_fn, tokens["input_ids"], tokens["attention_mask"])
