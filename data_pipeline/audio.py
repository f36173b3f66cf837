"""Audio decoding: any file a release ships -> float32 mono at the model's sample rate.

Every builder decodes through `load`, once, at prepare time; training and evaluation then
read int16 PCM that is already at the model's rate (`to_pcm16`), so no resampling happens
in the input pipeline.

Decoders: libsndfile (through soundfile) reads WAV in every PCM/float/ADPCM flavour, FLAC,
OGG Vorbis/Opus and, from libsndfile 1.1 on (bundled in soundfile >= 0.12 wheels), MP3.
Anything libsndfile rejects is retried with audioread, which decodes m4a/aac/webm and the
like only when ffmpeg (or GStreamer) is installed. Resampling uses soxr at its "HQ"
setting (the resampler behind librosa's `res_type="soxr_hq"`): linear phase, passband to
about 0.91 of the lower Nyquist frequency, so aliasing stays far below int16 resolution.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile
import soxr

RESAMPLER = "soxr HQ"


class AudioDecodeError(ValueError):
    """A file that exists but holds no decodable audio. The message names the file."""


def load(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decodes `path`, downmixes to mono (channel mean) and resamples to `sample_rate`.

    Returns a float32 array of shape [num_samples], nominally in [-1, 1]. Raises
    FileNotFoundError for a missing file and AudioDecodeError for one that cannot be
    decoded, holds no samples, or holds non-finite samples.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    frames, rate = _decode(path)
    if frames.shape[0] == 0:
        raise AudioDecodeError(f"audio file holds no samples: {path}")
    mono = frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(f"audio file holds NaN or infinite samples: {path}")
    return resample(mono, rate, sample_rate)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 audio from one rate to another (soxr HQ); a no-op at equal rates."""
    audio = np.asarray(audio, np.float32)
    if from_rate != to_rate:
        audio = soxr.resample(audio, from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, scaled by 32768 so that int16 sources round-trip exactly.

    Resampling can overshoot full scale slightly (Gibbs ripple); those samples clip.
    """
    return np.clip(np.rint(np.asarray(audio, np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def _decode(path: str) -> tuple[np.ndarray, int]:
    """Returns ([frames, channels] float32, native sample rate)."""
    try:
        frames, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return frames, int(rate)
    except (RuntimeError, TypeError, ValueError) as sndfile_error:
        # soundfile raises LibsndfileError (a RuntimeError) for unknown or corrupt files.
        try:
            return _decode_with_audioread(path)
        except Exception as fallback_error:  # any backend failure means "undecodable"
            raise AudioDecodeError(
                f"cannot decode audio file {path}: libsndfile: {_describe(sndfile_error)}; "
                f"audioread: {_describe(fallback_error)}"
            ) from sndfile_error


def _describe(error: Exception) -> str:
    # Some backends raise errors without a message (audioread's NoBackendError).
    return str(error) or type(error).__name__


def _decode_with_audioread(path: str) -> tuple[np.ndarray, int]:
    try:
        import audioread
    except ImportError as e:
        raise AudioDecodeError("audioread is not installed (pip install audioread)") from e
    with audioread.audio_open(path) as f:
        channels, rate = f.channels, f.samplerate
        pcm = b"".join(f)  # audioread yields 16-bit little-endian interleaved PCM.
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if channels < 1:
        raise AudioDecodeError(f"{channels} channels reported")
    return samples[: samples.size - samples.size % channels].reshape(-1, channels), int(rate)
