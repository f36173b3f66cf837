"""data_pipeline.audio.stream: `load` in blocks, for files too long to hold decoded."""

import numpy as np
import pytest
import soundfile as sf
import soxr

from data_pipeline import audio


def _signal(seconds, rate, channels, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tones = [0.3 * np.sin(2 * np.pi * f * t) for f in (220.0, 1250.0, 3100.0)[:channels]]
    return (np.stack(tones, 1) + 0.05 * rng.standard_normal((len(t), channels))).astype(
        np.float32)


@pytest.mark.parametrize("rate, channels, subtype, ext", [
    (44100, 2, "PCM_16", ".wav"),   # downmixed and resampled
    (22050, 1, "PCM_24", ".flac"),
    (16000, 1, "FLOAT", ".wav"),    # already at the target rate: no resampler
    (8000, 3, "PCM_16", ".wav"),    # upsampled, three channels
])
@pytest.mark.parametrize("block_frames", [1, 777, 4096, 1 << 16])
def test_stream_concatenates_to_load(tmp_path, rate, channels, subtype, ext, block_frames):
    path = tmp_path / f"x{ext}"
    sf.write(path, _signal(2.3 if block_frames > 1 else 0.2, rate, channels), rate,
             subtype=subtype)
    blocks = list(audio.stream(path, 16000, block_frames=block_frames))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    # The whole file decoded at once, downmixed and resampled by soxr's one-shot call:
    # the streaming resampler gives its samples exactly.
    frames, native = sf.read(path, dtype="float32", always_2d=True)
    mono = frames.mean(axis=1, dtype=np.float32) if channels > 1 else frames[:, 0]
    want = soxr.resample(mono, native, 16000, quality="HQ") if native != 16000 else mono
    np.testing.assert_array_equal(np.concatenate(blocks), want)
    np.testing.assert_array_equal(audio.load(path, 16000), want)
    if block_frames == 777:
        assert len(blocks) > 5


class _FakeAudioread:
    """audioread's interface, with buffers that split frames (and samples) anywhere."""

    def __init__(self, pcm: bytes, channels: int, rate: int, cuts):
        self.channels, self.samplerate = channels, rate
        self._pieces = [pcm[a:b] for a, b in zip([0, *cuts], [*cuts, len(pcm)], strict=True)]
        self.closed = False

    def __iter__(self):
        return iter(self._pieces)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_stream_through_audioread_carries_split_frames(tmp_path, monkeypatch):
    audioread = pytest.importorskip("audioread")
    path = tmp_path / "x.m4a"
    path.write_bytes(b"not something libsndfile reads")
    # Cuts inside a sample and inside a frame, and half a frame at the end (dropped).
    pcm = (_signal(0.5, 22050, 2) * 32767).astype("<i2").tobytes() + b"\x01\x02"
    opened = []

    def audio_open(p):
        opened.append(_FakeAudioread(pcm, 2, 22050, cuts=[3, 5, 1001, 4000, 4001]))
        return opened[-1]

    monkeypatch.setattr(audioread, "audio_open", audio_open)
    # The PCM decoded here, whole: the half frame at the end dropped, scaled, downmixed, and
    # resampled by soxr's one-shot call.
    frames = np.frombuffer(pcm[: len(pcm) - len(pcm) % 4], "<i2").astype(np.float32) / np.float32(32768.0)
    want = soxr.resample(frames.reshape(-1, 2).mean(axis=1, dtype=np.float32), 22050, 16000, quality="HQ")
    got = np.concatenate(list(audio.stream(path, 16000, block_frames=64)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(audio.load(path, 16000), want)
    assert len(opened) == 2 and all(f.closed for f in opened)


def test_stream_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        audio.stream(tmp_path / "missing.wav", 16000)  # at once, before any block
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    with pytest.raises(audio.AudioDecodeError, match="junk.wav"):
        list(audio.stream(tmp_path / "junk.wav", 16000))
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(audio.AudioDecodeError, match="no samples"):
        list(audio.stream(tmp_path / "empty.wav", 16000))
    wave = np.zeros(10000, np.float32)
    wave[9000] = np.nan
    sf.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    pieces = audio.stream(tmp_path / "nan.wav", 16000, block_frames=1000)
    assert len(next(pieces)) == 1000  # the problem is raised when it is reached
    with pytest.raises(audio.AudioDecodeError, match="NaN"):
        list(pieces)
    with pytest.raises(ValueError, match="sample_rate"):
        audio.stream(tmp_path / "nan.wav", 0)


def test_load_retries_audioread_when_libsndfile_fails_part_way(tmp_path, monkeypatch):
    audioread = pytest.importorskip("audioread")
    path = tmp_path / "x.wav"
    signal = _signal(3.0, 22050, 2)
    sf.write(path, signal, 22050, subtype="PCM_16")
    real_read = sf.SoundFile.read
    reads = []

    def failing_read(self, frames=-1, **kwargs):  # a damaged frame past the first block
        reads.append(frames)
        if len(reads) > 1:
            raise RuntimeError("Internal psf_fseek() failed.")
        return real_read(self, frames, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", failing_read)
    pcm = (signal * 32768).astype("<i2").tobytes()
    monkeypatch.setattr(audioread, "audio_open",
                        lambda p: _FakeAudioread(pcm, 2, 22050, cuts=[7, 1001]))
    # `stream` has already handed out the first block, so it reports the failure...
    with pytest.raises(audio.AudioDecodeError, match="libsndfile: Internal psf_fseek"):
        list(audio.stream(path, 16000, block_frames=4096))
    # ...while `load` decodes the file again, whole, with audioread.
    mono = (np.frombuffer(pcm, "<i2").astype(np.float32) / 32768).reshape(-1, 2).mean(
        axis=1, dtype=np.float32)
    np.testing.assert_array_equal(audio.load(path, 16000),
                                  soxr.resample(mono, 22050, 16000, quality="HQ"))

    def broken_open(p):
        raise EOFError()

    monkeypatch.setattr(audioread, "audio_open", broken_open)
    with pytest.raises(audio.AudioDecodeError) as error:
        audio.load(path, 16000)
    assert str(error.value) == (f"cannot decode audio file {path}: libsndfile: Internal "
                                "psf_fseek() failed.; audioread: EOFError")
