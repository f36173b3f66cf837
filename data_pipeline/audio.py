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

`stream` decodes in pieces, for files too long to hold decoded (a 20-hour recording is
28 GB of float32 at 48 kHz stereo): it reads BLOCK_FRAMES frames at a time and resamples
with soxr's streaming resampler, which gives the same samples as the one-shot call
(`tests/test_audio_stream.py`). `load` is the concatenation of `stream`'s pieces, so both
decode through one path.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import soundfile
import soxr

RESAMPLER = "soxr HQ"
BLOCK_FRAMES = 1 << 16  # frames decoded at a time by `stream` (1.4 s at 48 kHz)


class AudioDecodeError(ValueError):
    """A file that exists but holds no decodable audio. The message names the file."""


def load(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decodes `path`, downmixes to mono (channel mean) and resamples to `sample_rate`.

    Returns a float32 array of shape [num_samples], nominally in [-1, 1]. Raises
    FileNotFoundError for a missing file and AudioDecodeError for one that cannot be
    decoded, holds no samples, or holds non-finite samples.
    """
    blocks = stream(path, sample_rate)
    path = os.fspath(path)
    try:
        pieces = list(blocks)
    except _BackendError as sndfile_error:
        if sndfile_error.backend_name != "libsndfile":
            raise
        # libsndfile opened the file but failed part-way through (a truncated or damaged
        # frame): audioread may still decode it whole (ffmpeg is more forgiving).
        try:
            pieces = list(_stream(path, int(sample_rate), BLOCK_FRAMES, backend="audioread"))
        except _BackendError as fallback_error:
            raise _both_failed(path, sndfile_error.reason, fallback_error.reason) \
                from sndfile_error
    if not pieces:  # a file of a few samples can resample to none
        return np.zeros(0, np.float32)
    return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 audio from one rate to another (soxr HQ); a no-op at equal rates."""
    audio = np.asarray(audio, np.float32)
    if from_rate != to_rate:
        audio = soxr.resample(audio, from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def stream(path: str | os.PathLike, sample_rate: int,
           block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """`load` in blocks: float32 mono pieces at `sample_rate` whose concatenation is what
    `load(path, sample_rate)` returns, decoding `block_frames` frames at a time.

    The arguments are checked at once (FileNotFoundError, ValueError); decoding starts when
    the first block is asked for. AudioDecodeError as in `load`, raised when the problem is
    reached: an error past the start of the file comes after the blocks before it (the
    caller must then drop what it made of them). Unlike `load`, a file that libsndfile opens
    but cannot read to the end is not retried with audioread (its blocks are already out).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if block_frames < 1:
        raise ValueError(f"block_frames must be positive, got {block_frames}")
    return _stream(path, int(sample_rate), int(block_frames))


def _stream(path: str, sample_rate: int, block_frames: int,
            backend: str = "libsndfile") -> Iterator[np.ndarray]:
    resampler = None
    decoded = 0
    with _open_blocks(path, block_frames, backend) as (rate, blocks):
        for frames in blocks:
            decoded += frames.shape[0]
            mono = frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
            if not np.all(np.isfinite(mono)):
                raise AudioDecodeError(f"audio file holds NaN or infinite samples: {path}")
            if rate == sample_rate:
                yield np.ascontiguousarray(mono, dtype=np.float32)
                continue
            if resampler is None:
                resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32",
                                                quality="HQ")
            out = resampler.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32))
            if out.size:
                yield out
    if decoded == 0:
        raise AudioDecodeError(f"audio file holds no samples: {path}")
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        if tail.size:
            yield tail


class _BackendError(AudioDecodeError):
    """One decoder's failure on `path`; `reason` says why, without the path."""

    def __init__(self, path: str, backend: str, error: Exception | str):
        self.backend_name = backend
        self.reason = error if isinstance(error, str) else _describe(error)
        super().__init__(f"cannot decode audio file {path}: {backend}: {self.reason}")


def _both_failed(path: str, sndfile_reason: str, audioread_reason: str) -> AudioDecodeError:
    return AudioDecodeError(f"cannot decode audio file {path}: libsndfile: {sndfile_reason}; "
                            f"audioread: {audioread_reason}")


class _open_blocks:
    """`with _open_blocks(path, n) as (rate, blocks)`: [frames, channels] float32 blocks
    from libsndfile, else audioread (or audioread alone: backend="audioread"); every
    decoder failure is an AudioDecodeError."""

    def __init__(self, path: str, block_frames: int, backend: str = "libsndfile"):
        self.path = path
        self.block_frames = block_frames
        self.backend = backend
        self._close = lambda: None

    def __enter__(self) -> tuple[int, Iterator[np.ndarray]]:
        if self.backend == "audioread":
            try:
                return self._enter_audioread()
            except Exception as e:  # any backend failure means "undecodable"
                raise _BackendError(self.path, "audioread", e) from e
        try:
            f = soundfile.SoundFile(self.path)
        except (RuntimeError, TypeError, ValueError) as sndfile_error:
            try:
                return self._enter_audioread()
            except Exception as fallback_error:  # any backend failure means "undecodable"
                raise _both_failed(self.path, _describe(sndfile_error),
                                   _describe(fallback_error)) from sndfile_error
        self._close = f.close
        return int(f.samplerate), self._soundfile_blocks(f)

    def __exit__(self, *exc) -> None:
        self._close()

    def _soundfile_blocks(self, f) -> Iterator[np.ndarray]:
        while True:
            try:
                frames = f.read(self.block_frames, dtype="float32", always_2d=True)
            except (RuntimeError, TypeError, ValueError) as e:
                raise _BackendError(self.path, "libsndfile", e) from e
            if frames.shape[0] == 0:
                return
            yield frames

    def _enter_audioread(self) -> tuple[int, Iterator[np.ndarray]]:
        try:
            import audioread
        except ImportError as e:
            raise AudioDecodeError("audioread is not installed (pip install audioread)") from e
        f = audioread.audio_open(self.path)
        if f.channels < 1:
            f.close()
            raise AudioDecodeError(f"{f.channels} channels reported")
        self._close = f.close
        return int(f.samplerate), self._audioread_blocks(f, f.channels)

    def _audioread_blocks(self, f, channels: int) -> Iterator[np.ndarray]:
        # audioread yields 16-bit little-endian interleaved PCM in buffers of any length: a
        # frame can straddle two buffers, so the bytes of an incomplete one are carried on.
        frame_bytes = 2 * channels
        carry = b""
        try:
            for buffer in f:
                data = carry + buffer
                whole = len(data) - len(data) % frame_bytes
                carry = data[whole:]
                if whole:
                    samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32)
                    yield samples.reshape(-1, channels) / np.float32(32768.0)
        except Exception as e:  # as in `load`: any backend failure means "undecodable"
            raise _BackendError(self.path, "audioread", e) from e


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, scaled by 32768 so that int16 sources round-trip exactly.

    Samples beyond full scale clip: resampling overshoot of full-scale audio (Gibbs ripple),
    and float sources above 1 (`clipped_peak` says whether and how far).
    """
    return np.clip(np.rint(np.asarray(audio, np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def clipped_peak(audio: np.ndarray) -> float | None:
    """The largest absolute sample of `audio` if `to_pcm16` clips any of its samples, else None."""
    audio = np.asarray(audio, np.float32)
    if audio.size == 0:
        return None
    high, low = float(audio.max()) * 32768.0, float(audio.min()) * 32768.0
    if np.rint(high) <= 32767 and np.rint(low) >= -32768:
        return None
    return max(high, -low) / 32768.0


def _describe(error: Exception) -> str:
    # Some backends raise errors without a message (audioread's NoBackendError).
    return str(error) or type(error).__name__
