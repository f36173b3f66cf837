"""Embedding functions of a trained dual encoder: what export bundles serve, what the
trainer's validation and every evaluator call (one code path, so numbers agree).

`Embedder` implements the embedder protocol: `embed_audio(waveforms, sample_rate)` and
`embed_text(texts)`, both returning L2-normalised float32 numpy arrays, plus
`sample_rate`, `chunk_seconds` and `config`.

A clip longer than `window_seconds` (an hour-long recording in an evaluation set) is not
run through the network in one call, whose activations grow with its length: it is
embedded in windows of at most about `window_seconds` (and at least twice the
convolutions' reach, a few seconds), one at a time, and the windows'
results are combined into what the whole clip gives (up to float rounding, since the
windows compile to other programs). With the MLP head the audio encoder's per-step
features (before its global max + mean pooling over time) are computed in windows that
overlap by the convolutions' reach and start on the pooling grid, each window keeping the
steps that its margins protect from its edges; the pooling then runs over all steps. With
the Transformer head each chunk is embedded independently anyway, so windows are groups of
whole chunks, and the head runs over all chunks. Clips within the bound are embedded as
one call, as before.
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
                 *, batch_size: int = 16, window_seconds: float = 60.0):
        self.config = config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # Clips longer than this are embedded in windows of about this length (see above).
        self.window_seconds = float(window_seconds)
        self._audio_config = model_lib.audio_config(config.model)
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

        def frames_fn(state, waveforms):
            model = nnx.merge(graphdef, *state)
            return model.audio_encoder.frame_features(waveforms)

        def pooled_fn(state, frames):
            model = nnx.merge(graphdef, *state)
            embedding = model.audio_encoder.pool_frames(frames)["embedding"]
            return loss_lib.l2_normalize(model.audio_head(embedding))

        def chunks_fn(state, waveforms):
            model = nnx.merge(graphdef, *state)
            return model.audio_encoder(waveforms, chunk_samples=self._chunk)["chunk_embeddings"]

        def head_fn(state, chunk_embeddings, audible):
            model = nnx.merge(graphdef, *state)
            return loss_lib.l2_normalize(model.audio_head(chunk_embeddings, audible))

        self._state = state
        self._audio_fn = jax.jit(audio_fn)
        self._text_fn = jax.jit(text_fn)
        self._frames_fn = jax.jit(frames_fn)
        self._pooled_fn = jax.jit(pooled_fn)
        self._chunks_fn = jax.jit(chunks_fn)
        self._head_fn = jax.jit(head_fn)

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
        silence to a whole number of chunks. A clip shorter than `min_samples`, the least
        the audio network takes (`(downsampling - 1) * hop_length` samples: 0.31 s for
        ResNet38 at 32 kHz), is padded with silence to it, as the search indexer pads a
        file shorter than its window.
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
        clips = [np.pad(c, (0, self.min_samples - c.size)) if c.size < self.min_samples else c
                 for c in clips]
        if self._chunk:
            clips = [np.pad(c, (0, -c.size % self._chunk)) for c in clips]
        out = np.zeros((len(clips), self.embed_dim), np.float32)
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            if c.size > self.window_samples:
                out[i] = self._embed_long(c)
                continue
            by_length.setdefault(c.size, []).append(i)
        for indices in by_length.values():
            out[indices] = self._batched(self._audio_fn, np.stack([clips[i] for i in indices]))
        return out

    @property
    def min_samples(self) -> int:
        """The shortest clip the audio network takes; `embed_audio` pads shorter ones."""
        return int(self._audio_config.min_samples)

    @property
    def window_samples(self) -> int:
        """Clips longer than this many samples are embedded in windows."""
        return max(1, int(round(self.window_seconds * self.sample_rate)))

    def _embed_long(self, clip: np.ndarray) -> np.ndarray:
        """One clip's `[D]` embedding, computed in windows of about `window_samples`."""
        if self._chunk:
            chunk = self._chunk
            per_window = max(1, self.window_samples // chunk)
            pieces = [np.asarray(self._chunks_fn(self._state, clip[None, start:start + per_window * chunk]))
                      for start in range(0, clip.size, per_window * chunk)]
            audible = np.any(clip.reshape(-1, chunk) != 0, axis=-1)[None]
            return np.asarray(self._head_fn(self._state, np.concatenate(pieces, axis=1), audible))[0]
        audio = self._audio_config
        hop, steps_of = audio.frontend.hop_length, audio.downsampling  # frames per time step
        step_samples = hop * steps_of
        steps = (1 + clip.size // hop) // steps_of
        # Margin, in steps, so that every kept step sees neither a window's edge frames
        # (whose STFT frames reflect at the edge) nor the convolutions' zero padding there.
        edge = -(-audio.frontend.n_fft // (2 * hop))
        margin = -(-(audio.context_frames + edge) // steps_of) + 1
        core = max(1, self.window_samples // step_samples - 2 * margin)
        pieces = []
        for first in range(0, max(steps, 1), core):  # (no step: the network's own error)
            last = min(steps, first + core)
            start = max(0, first - margin)
            # The window that reaches the clip's last step ends where the clip ends, so that
            # its end is the whole clip's end, step for step.
            end = clip.size if last + margin >= steps else (last + margin) * step_samples
            frames = np.asarray(self._frames_fn(self._state, clip[None, start * step_samples:end]))
            pieces.append(frames[:, first - start:last - start])
        return np.asarray(self._pooled_fn(self._state, np.concatenate(pieces, axis=1)))[0]

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        tokens = self.tokenizer(texts)
        return self._batched(self._text_fn, tokens["input_ids"], tokens["attention_mask"])
