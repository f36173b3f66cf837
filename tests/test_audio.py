"""data_pipeline.audio: decoding every format a release holds, downmixing, resampling."""

import numpy as np
import pytest
import soundfile as sf

from data_pipeline import audio
from layouts import Tone, write_corrupt, write_tone

INTERIOR = slice(160, -160)  # resampler edge transients (10 ms at 16 kHz) are not compared


def test_same_rate_int16_is_exact(tmp_path):
    pcm = (np.random.default_rng(0).integers(-32768, 32768, 4000)).astype(np.int16)
    sf.write(tmp_path / "x.wav", pcm, 16000, subtype="PCM_16")
    y = audio.load(tmp_path / "x.wav", 16000)
    assert y.dtype == np.float32 and y.shape == (4000,)
    np.testing.assert_array_equal(audio.to_pcm16(y), pcm)


@pytest.mark.parametrize(
    "rate,freqs,subtype,ext,tol",
    [
        (44100, (440.0,), "PCM_16", ".wav", 2e-4),
        (48000, (440.0, 700.0), "PCM_24", ".wav", 2e-4),  # stereo: mean of the channels
        (22050, (300.0,), "PCM_U8", ".wav", 1.5e-2),  # 8-bit: quantisation step 1/128
        (96000, (523.0,), "FLOAT", ".wav", 2e-4),
        (8000, (250.0, 500.0), "PCM_32", ".wav", 2e-4),  # upsampling
        (44100, (330.0,), "PCM_16", ".flac", 2e-4),
    ],
)
def test_decode_downmix_resample_matches_analytic_signal(tmp_path, rate, freqs, subtype, ext, tol):
    tone = Tone(rate, freqs)
    path = tmp_path / f"x{ext}"
    write_tone(path, tone, subtype=subtype)
    y = audio.load(path, 16000)
    expected = tone.mono(16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == len(expected)
    np.testing.assert_allclose(y[INTERIOR], expected[INTERIOR], atol=tol)


@pytest.mark.parametrize("ext", [".ogg", ".mp3"])
def test_lossy_formats_decode(tmp_path, ext):
    tone = Tone(44100, (440.0,), seconds=1.0)
    write_tone(tmp_path / f"x{ext}", tone)
    y = audio.load(tmp_path / f"x{ext}", 16000)
    expected = tone.mono(16000)
    # Codecs add a delay/padding of a few ms; align by cross-correlation before comparing.
    assert abs(len(y) - len(expected)) < 0.1 * 16000
    n = min(len(y), len(expected)) - 800
    lags = range(0, 800)
    best = max(lags, key=lambda k: float(np.dot(y[k : k + n], expected[:n])))
    corr = np.corrcoef(y[best : best + n][400:-400], expected[:n][400:-400])[0, 1]
    assert corr > 0.99


def test_resampling_removes_content_above_the_new_nyquist(tmp_path):
    # A 12 kHz tone cannot be represented at 16 kHz; a naive resampler aliases it to 4 kHz.
    write_tone(tmp_path / "hf.wav", Tone(44100, (12000.0,), amp=0.9))
    y = audio.load(tmp_path / "hf.wav", 16000)
    rms = float(np.sqrt(np.mean(y[INTERIOR] ** 2)))
    assert rms < 0.9 / np.sqrt(2) * 1e-3  # at least 60 dB down


def test_to_pcm16_clips_and_rounds():
    x = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 0.99999, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(
        audio.to_pcm16(x), np.array([-32768, -32768, -16384, 0, 16384, 32767, 32767, 32767], np.int16)
    )


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        audio.load(tmp_path / "nope.wav", 16000)


@pytest.mark.parametrize("content", [b"", b"not audio at all", None])
def test_undecodable_file_raises_decode_error_naming_it(tmp_path, content):
    path = tmp_path / "bad clip.wav"
    if content is None:
        write_corrupt(path)
    else:
        path.write_bytes(content)
    with pytest.raises(audio.AudioDecodeError, match="bad clip.wav") as info:
        audio.load(path, 16000)
    assert isinstance(info.value, ValueError)


def test_file_without_samples_is_an_error(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000, subtype="PCM_16")
    with pytest.raises(audio.AudioDecodeError, match="no samples"):
        audio.load(tmp_path / "empty.wav", 16000)


def test_non_finite_samples_are_an_error(tmp_path):
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(audio.AudioDecodeError, match="NaN"):
        audio.load(tmp_path / "nan.wav", 16000)


def test_clipped_peak_says_whether_to_pcm16_clips():
    assert audio.clipped_peak(np.array([-1.0, 0.5, 32767 / 32768], np.float32)) is None  # int16's range
    assert audio.clipped_peak(np.array([0.2, 1.25, -0.3], np.float32)) == 1.25
    assert audio.clipped_peak(np.array([-1.5, 0.1], np.float32)) == 1.5
    assert audio.clipped_peak(np.zeros(0, np.float32)) is None
    rng = np.random.default_rng(0)
    for scale in (0.9, 1.0, 1.0001, 1.3):
        x = (rng.uniform(-1, 1, 1000) * scale).astype(np.float32)
        ints = np.rint(x.astype(np.float64) * 32768)
        clips = bool(np.any((ints > 32767) | (ints < -32768)))
        peak = audio.clipped_peak(x)
        assert (peak is not None) == clips, scale
        if clips:
            assert peak == float(np.max(np.abs(x.astype(np.float64))))
