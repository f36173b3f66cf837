"""The log-mel frontend against torchlibrosa (PANNs' frontend) and float64, and SpecAugment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atjax import frontend

librosa = pytest.importorskip("librosa")
torch = pytest.importorskip("torch")
stft = pytest.importorskip("torchlibrosa.stft")

CONFIG = frontend.FrontendConfig()
SR = CONFIG.sample_rate


@pytest.fixture(scope="module")
def torchlibrosa_logmel():
    spectrogram = stft.Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann",
                                   center=True, pad_mode="reflect", freeze_parameters=True)
    logmel = stft.LogmelFilterBank(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000,
                                   ref=1.0, amin=1e-10, top_db=None, freeze_parameters=True)

    def run(waveform):
        with torch.no_grad():
            return logmel(spectrogram(torch.from_numpy(waveform)))[:, 0].numpy()

    return run


@jax.jit
def _log_mel(waveform):
    return frontend.log_mel(waveform, CONFIG)


def _exact_log_mel(waveform: np.ndarray) -> np.ndarray:
    """The same features in float64 numpy, by explicit framing and a direct rfft."""
    x = np.pad(waveform.astype(np.float64), ((0, 0), (512, 512)), mode="reflect")
    count = 1 + waveform.shape[1] // 320
    frames = np.stack([x[:, t * 320 : t * 320 + 1024] for t in range(count)], axis=1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power @ librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000,
                                      dtype=np.float64).T
    return 10 * np.log10(np.maximum(mel, 1e-10))


def _tones(batch, samples, freqs, amplitude, rng):
    t = np.arange(samples) / SR
    phases = rng.uniform(0, 2 * np.pi, (batch, len(freqs), 1))
    return (amplitude * np.sin(2 * np.pi * np.asarray(freqs)[:, None] * t + phases)).sum(1)


@pytest.mark.parametrize("config", [
    frontend.FrontendConfig(),
    frontend.FrontendConfig(sample_rate=16000, n_fft=512, hop_length=160, fmax=8000.0),
    frontend.FrontendConfig(sample_rate=22050, n_fft=2048, hop_length=512, n_mels=128,
                            fmin=0.0, fmax=11025.0),
])
def test_mel_filterbank_is_librosas(config):
    want = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                               fmin=config.fmin, fmax=config.fmax).T
    got = frontend.mel_filterbank(config)
    assert got.shape == (config.n_fft // 2 + 1, config.n_mels) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("batch,samples", [(1, 32000), (3, 9999), (2, 600), (4, 320 * 7), (1, 513)])
def test_noise_matches_torchlibrosa(torchlibrosa_logmel, batch, samples):
    rng = np.random.default_rng(samples)
    waveform = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
    want = torchlibrosa_logmel(waveform)
    got = np.asarray(_log_mel(waveform))
    assert got.shape == want.shape == (batch, frontend.num_frames(samples, CONFIG), 64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("batch,samples", [(2, 32000), (1, 10000)])
@pytest.mark.parametrize("freqs", [(440.3, 677.7), (3000.7, 4517.0), (9000.1, 13000.0)])
def test_tones_match_torchlibrosa(torchlibrosa_logmel, batch, samples, freqs):
    # Harmonic tones over a noise floor 40-60 dB down, so that every mel band stays well
    # above float32 rounding (see test_pure_tones for what happens without the floor).
    rng = np.random.default_rng(1)
    noise = 0.01 * rng.standard_normal((batch, samples))
    waveform = (_tones(batch, samples, freqs, 0.4, rng) + noise).astype(np.float32)
    want = torchlibrosa_logmel(waveform)
    assert want.max() - want.min() > 50  # a real dynamic range, not flat noise
    np.testing.assert_allclose(np.asarray(_log_mel(waveform)), want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("freq", [440.3, 1000.0, 3000.7, 9000.1])
@pytest.mark.parametrize("amplitude", [0.01, 1.0])
def test_pure_tones(torchlibrosa_logmel, freq, amplitude):
    # A pure tone leaves mel bands ~100 dB below the peak, where float32 rounding of any
    # STFT (torchlibrosa's conv included) is the whole signal. Within 60 dB of each frame's
    # loudest band we match torchlibrosa to 1e-3 dB; below that, both are rounding noise,
    # and ours must stay as close to the float64 answer as torchlibrosa's float32 does.
    waveform = _tones(1, 16000, [freq], amplitude, np.random.default_rng(2)).astype(np.float32)
    want = torchlibrosa_logmel(waveform)
    exact = _exact_log_mel(waveform)
    got = np.asarray(_log_mel(waveform))
    audible = exact.max(-1, keepdims=True) - exact < 60
    np.testing.assert_allclose(got[audible], want[audible], rtol=0, atol=1e-3)
    torchlibrosa_error = np.abs(want - exact)[~audible].max(initial=0)
    assert np.abs(got - exact)[~audible].max(initial=0) <= max(3 * torchlibrosa_error, 1e-3)


def test_silence_is_the_floor(torchlibrosa_logmel):
    waveform = np.zeros((2, 4000), np.float32)
    np.testing.assert_array_equal(np.asarray(_log_mel(waveform)), torchlibrosa_logmel(waveform))
    assert np.all(np.asarray(_log_mel(waveform)) == -100.0)


def test_leading_batch_axes_and_eager_jit_agree():
    waveform = np.random.default_rng(3).standard_normal((2, 3, 5000)).astype(np.float32)
    batched = np.asarray(frontend.log_mel(waveform, CONFIG))
    assert batched.shape == (2, 3, 16, 64)
    flat = np.asarray(_log_mel(waveform.reshape(6, 5000))).reshape(2, 3, 16, 64)
    np.testing.assert_allclose(batched, flat, rtol=0, atol=1e-4)
    module = frontend.LogMel(CONFIG)
    np.testing.assert_allclose(np.asarray(module(waveform)), batched, rtol=0, atol=1e-4)
    assert not nnx.state(module, nnx.Param)  # the constants are not parameters


@pytest.mark.parametrize("samples", [0, 1, 320, 512])
def test_too_short_for_reflect_padding(samples):
    with pytest.raises(ValueError, match="more than n_fft // 2 = 512 samples"):
        frontend.log_mel(np.zeros((1, samples), np.float32), CONFIG)


def test_num_frames():
    assert frontend.num_frames(320000, CONFIG) == 1001
    assert frontend.num_frames(32000, CONFIG) == 101
    assert frontend.num_frames(319, CONFIG) == 1


@pytest.mark.parametrize("fields", [{"n_fft": 0}, {"hop_length": -1}, {"fmax": 20000.0},
                                    {"fmin": 500.0, "fmax": 400.0}, {"n_mels": 64.0}])
def test_config_validation(fields):
    with pytest.raises(ValueError, match="FrontendConfig"):
        frontend.FrontendConfig(**fields)


def _runs(mask_1d):
    """Lengths of the runs of True in a boolean vector."""
    padded = np.concatenate([[0], mask_1d.astype(int), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[::2]


def test_spec_augment_zeroes_stripes_in_training_only():
    augment = frontend.SpecAugment(rngs=nnx.Rngs(augment=0))
    batch, frames, bins = 256, 300, 64
    features = jnp.ones((batch, frames, bins))
    out = np.asarray(augment(features))
    assert set(np.unique(out)) <= {0.0, 1.0}
    time_dropped = (out == 0).all(axis=2)  # whole frames zeroed
    freq_dropped = (out == 0).all(axis=1)  # whole mel bins zeroed
    # Everything zeroed is a whole frame or a whole bin: stripes, not scattered cells.
    np.testing.assert_array_equal(out == 0, time_dropped[:, :, None] | freq_dropped[:, None, :])
    time_runs = [_runs(m) for m in time_dropped]
    freq_runs = [_runs(m) for m in freq_dropped]
    # At most two stripes each (overlapping ones merge), each narrower than 64 / 8.
    assert max(len(r) for r in time_runs) <= 2 and max(len(r) for r in freq_runs) <= 2
    assert max(r.sum() for r in time_runs) <= 2 * 63 and max(r.sum() for r in freq_runs) <= 2 * 7
    widest_time = max(r.max(initial=0) for r in time_runs)
    widest_freq = max(r.max(initial=0) for r in freq_runs)
    assert 50 <= widest_time <= 126 and 6 <= widest_freq <= 14
    # Widths are uniform in [0, 64): the mean zeroed fraction is near 2 * 31.5 / 300 (a bit
    # less where stripes overlap), and the examples differ.
    assert 0.17 < time_dropped.mean() < 0.22 and 0.08 < freq_dropped.mean() < 0.12
    assert len({m.tobytes() for m in time_dropped}) > batch // 2
    # Stripes start anywhere from the first frame, and (torchlibrosa's start is drawn
    # below size - width) end before the last one: the last frame and bin are never dropped.
    assert time_dropped[:, 0].any() and time_dropped[:, -2].any()
    assert not time_dropped[:, -1].any() and not freq_dropped[:, -1].any()

    augment.eval()
    np.testing.assert_array_equal(np.asarray(augment(features)), np.asarray(features))
    augment.train()
    assert not np.array_equal(np.asarray(augment(features)), out)  # the stream advances


def test_spec_augment_keys_and_short_axes():
    features = jnp.ones((4, 40, 64))
    first = frontend.SpecAugment(rngs=nnx.Rngs(augment=7))(features)
    again = frontend.SpecAugment(rngs=nnx.Rngs(augment=7))(features)
    other = frontend.SpecAugment(rngs=nnx.Rngs(augment=8))(features)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    # 40 frames are fewer than the widest stripe: still stripes, never an error.
    assert np.asarray(first).shape == (4, 40, 64)
