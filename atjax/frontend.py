"""The PANNs log-mel frontend and SpecAugment, computed on the accelerator inside the model.

PANNs computes its features inside the network (torchlibrosa's `Spectrogram` +
`LogmelFilterBank`), so the input pipeline only delivers waveforms and the checkpoint's
numbers hold only for exactly these features:

  periodic Hann window of n_fft samples, centred frames (reflect padding of n_fft // 2),
  power spectrum |X|^2, Slaney-scale / Slaney-normalised mel filterbank,
  10 * log10(max(mel, 1e-10)) with ref = 1.0 and no top_db clipping.

The STFT is framing by static slices followed by `jnp.fft.rfft`, not a real-DFT matmul:
an FFT is exact float32 arithmetic whatever the matmul-precision default is, whereas on
GPUs XLA may run float32 matmuls in TF32 (10-bit mantissa), whose ~1e-3 relative error
becomes whole dBs in quiet mel bands next to loud ones. The FFT is also O(n log n) against
the DFT's 1026 x 1024 multiply-adds per frame. Frames are slices of a [blocks, hop]
reshape rather than a gather, which XLA fuses into the FFT's input on any backend. The
small mel matmul runs at HIGHEST precision for the same TF32 reason.

The frontend stays float32 even when the network computes in bfloat16: log-mel values
span ~100 dB, and bfloat16's 8-bit mantissa would quantise them in ~0.4 dB steps.

The mel filterbank and the window are numpy constants built once per config (no librosa
or scipy at run time). They are folded into the compiled program, not kept as model
state, so they are neither trained nor checkpointed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# PANNs' power_to_db floor. Its reference is 1.0, so the reference term
# 10 * log10(max(amin, ref)) is zero and left out.
AMIN = 1e-10


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """PANNs' feature settings; the defaults are those of the released ResNet38."""

    sample_rate: int = 32000
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 14000.0

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"FrontendConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                "FrontendConfig needs 0 <= fmin < fmax <= sample_rate / 2, got "
                f"fmin={self.fmin}, fmax={self.fmax}, sample_rate={self.sample_rate}"
            )

    @property
    def num_bins(self) -> int:
        """Frequency bins of the one-sided spectrum."""
        return self.n_fft // 2 + 1


def num_frames(num_samples: int, config: FrontendConfig) -> int:
    """Frames of a centred STFT of `num_samples` samples: 1 + N // hop (10 s at 32 kHz: 1001)."""
    return 1 + num_samples // config.hop_length


def _hz_to_mel(hz):
    # Slaney's auditory-toolbox scale: linear below 1 kHz (200/3 Hz per mel), logarithmic
    # above it (27 mels per factor 6.4). Not HTK's 2595 * log10(1 + f / 700).
    hz = np.asarray(hz, np.float64)
    linear = hz / (200.0 / 3.0)
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    linear = mel * (200.0 / 3.0)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


@functools.cache
def mel_filterbank(config: FrontendConfig) -> np.ndarray:
    """The Slaney mel filterbank, [n_fft // 2 + 1, n_mels] float32 (librosa's, transposed).

    Triangles whose corners are n_mels + 2 points evenly spaced on the Slaney mel scale from
    fmin to fmax, each scaled by 2 / (its width in Hz) so that every filter has the same
    area ("slaney" norm). Computed in float64 and rounded once, as librosa does.
    """
    bin_hz = np.linspace(0.0, config.sample_rate / 2, config.num_bins)
    corners = _mel_to_hz(
        np.linspace(_hz_to_mel(config.fmin), _hz_to_mel(config.fmax), config.n_mels + 2)
    )
    lower, centre, upper = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    matrix = np.ascontiguousarray(weights.T, dtype=np.float32)
    matrix.flags.writeable = False  # shared through the cache
    return matrix


@functools.cache
def hann_window(n_fft: int) -> np.ndarray:
    """The periodic ("DFT-even") Hann window of n_fft samples, float32."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    window = window.astype(np.float32)
    window.flags.writeable = False
    return window


def _frames(padded: jax.Array, n_fft: int, hop: int, count: int) -> jax.Array:
    """[..., L] -> [..., count, n_fft], frame t starting at sample t * hop."""
    # Frame t is blocks t .. t+k-1 of `hop` samples (k = ceil(n_fft / hop)) cut to n_fft
    # samples: static slices of one reshape.
    k = -(-n_fft // hop)
    num_blocks = count - 1 + k
    length = num_blocks * hop
    have = padded.shape[-1]
    if have >= length:
        padded = padded[..., :length]
    else:  # samples past the last frame's end are never read; zeros just make the reshape fit
        padded = jnp.pad(padded, [(0, 0)] * (padded.ndim - 1) + [(0, length - have)])
    blocks = padded.reshape(*padded.shape[:-1], num_blocks, hop)
    pieces = [blocks[..., j : j + count, :] for j in range(k)]
    return jnp.concatenate(pieces, axis=-1)[..., :n_fft]


def log_mel(waveform: jax.Array, config: FrontendConfig) -> jax.Array:
    """Log-mel spectrogram in dB: waveforms [..., N] -> [..., 1 + N // hop, n_mels], float32.

    Matches torchlibrosa's Spectrogram(window='hann', center=True, pad_mode='reflect') +
    LogmelFilterBank(ref=1.0, amin=1e-10, top_db=None), PANNs' frontend.
    """
    dtype = getattr(waveform, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        # Integer PCM read as float would be 2**15 times too loud (+90 dB for int16): a
        # silent shift of every feature, so refuse it.
        raise TypeError(f"log_mel expects float waveforms in [-1, 1], got {dtype}; scale "
                        "integer PCM by its full scale first (e.g. int16 / 32768)")
    x = jnp.asarray(waveform, jnp.float32)
    if x.ndim < 1:
        raise ValueError("log_mel expects waveforms [..., samples], got a scalar")
    n = x.shape[-1]
    pad = config.n_fft // 2
    if n <= pad:
        # Reflect padding mirrors the signal about its ends, which needs more samples than
        # the pad (PyTorch refuses such input too).
        raise ValueError(
            f"log_mel needs more than n_fft // 2 = {pad} samples for centred frames with "
            f"reflect padding, got {n}"
        )
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = _frames(x, config.n_fft, config.hop_length, num_frames(n, config))
    spectrum = jnp.fft.rfft(frames * jnp.asarray(hann_window(config.n_fft)), axis=-1)
    power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    mel = jnp.matmul(
        power, jnp.asarray(mel_filterbank(config)), precision=jax.lax.Precision.HIGHEST
    )
    return 10.0 * jnp.log10(jnp.maximum(mel, AMIN))


class LogMel(nnx.Module):
    """`log_mel` as a layer of the network; it holds only its (static) config."""

    def __init__(self, config: FrontendConfig):
        self.config = config

    def __call__(self, waveform: jax.Array) -> jax.Array:
        return log_mel(waveform, self.config)


def _stripe_mask(key, batch_shape: tuple[int, ...], size: int, max_width: int, num: int):
    """True where one of `num` random stripes covers position i of an axis of `size`."""
    width_key, start_key = jax.random.split(key)
    shape = batch_shape + (num,)
    # As torchlibrosa's DropStripes: width uniform in [0, max_width), start uniform in
    # [0, size - width), so a stripe never covers the last position (kept: it is the
    # distribution PANNs trained with). Clipping the width to the axis only matters for
    # axes shorter than max_width (short chunks), where torchlibrosa would fail instead.
    width = jnp.minimum(jax.random.randint(width_key, shape, 0, max_width), size)
    start = jax.random.randint(start_key, shape, 0, jnp.maximum(size - width, 1))
    position = jnp.arange(size)
    inside = (position >= start[..., None]) & (position < (start + width)[..., None])
    return jnp.any(inside, axis=-2)


class SpecAugment(nnx.Module):
    """SpecAugment as in PANNs: zero random time and frequency stripes, in training only.

    Each example independently loses `time_stripes` stripes of fewer than
    `time_drop_width` frames and `freq_stripes` stripes of fewer than `freq_drop_width` mel
    bins (PANNs: 2 of < 64 frames and 2 of < 8 bins). Random numbers come from the
    `augment` stream of `rngs` (reseed with `nnx.reseed(model, augment=key)`), and
    `model.train()` / `model.eval()` switch it on and off through `deterministic`, as they
    do dropout. On an axis shorter than the widest stripe (chunks under 64 frames) a
    stripe may cover the whole axis.
    """

    def __init__(
        self,
        *,
        time_drop_width: int = 64,
        time_stripes: int = 2,
        freq_drop_width: int = 8,
        freq_stripes: int = 2,
        deterministic: bool = False,
        rngs: nnx.Rngs,
    ):
        self.time_drop_width = time_drop_width
        self.time_stripes = time_stripes
        self.freq_drop_width = freq_drop_width
        self.freq_stripes = freq_stripes
        self.deterministic = deterministic
        self.rngs = rngs["augment"].fork()

    def __call__(self, features: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        """features [..., time, freq] -> the same with the stripes set to zero."""
        if self.deterministic if deterministic is None else deterministic:
            return features
        time_key, freq_key = jax.random.split(self.rngs())
        batch_shape = features.shape[:-2]
        time_mask = _stripe_mask(
            time_key, batch_shape, features.shape[-2], self.time_drop_width, self.time_stripes
        )
        freq_mask = _stripe_mask(
            freq_key, batch_shape, features.shape[-1], self.freq_drop_width, self.freq_stripes
        )
        dropped = time_mask[..., :, None] | freq_mask[..., None, :]
        return jnp.where(dropped, jnp.zeros((), features.dtype), features)
