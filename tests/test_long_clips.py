"""Embedding clips longer than the Embedder's window: computed in bounded windows, with the
embedding the whole clip gives in one call (MLP head: per-step features in overlapping
windows, pooled after; Transformer head: chunks in groups)."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from atjax import config as config_lib
from atjax import inference
from atjax import loss as loss_lib
from atjax import model as model_lib
from atjax import train_step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RATE = 16000


def _embedder(head):
    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny,head={head}", [])
    model = model_lib.build(config.model, seed=0)
    _, eval_def, params, batch_stats, rest = step_lib.split_model(model)
    embedder = inference.Embedder(config, eval_def, params, batch_stats, rest, tokenizer=None, batch_size=1)

    @jax.jit
    def whole(waveform):  # the model's own call on the whole clip, outside the Embedder
        m = nnx.merge(eval_def, params, batch_stats, rest)
        return loss_lib.l2_normalize(m.encode_audio(waveform))

    return embedder, whole


def _record_lengths(embedder):
    """The longest waveform any network call of the Embedder receives."""
    longest = [0]
    for name in ("_audio_fn", "_frames_fn", "_chunks_fn"):
        fn = getattr(embedder, name, None)
        if fn is None:
            continue

        def recording(state, waveforms, fn=fn):
            longest[0] = max(longest[0], waveforms.shape[-1])
            return fn(state, waveforms)
        setattr(embedder, name, recording)
    return longest


@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_long_clips_are_embedded_in_bounded_windows_with_the_whole_clips_embedding(head):
    embedder, whole = _embedder(head)
    rng = np.random.default_rng(0)
    t = np.arange(int(9.3 * RATE)) / RATE
    # A clip whose content changes over time (so that misplaced windows would show).
    long_clip = (0.3 * np.sin(2 * np.pi * (300 + 80 * t) * t) * (1 + np.sin(t))
                 + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    long_clip[int(6 * RATE):int(6.5 * RATE)] += 0.5 * rng.standard_normal(RATE // 2).astype(np.float32)
    short_clip = long_clip[:int(4.1 * RATE)].copy()
    embedder.window_seconds = 5.0  # 9.3 s: five windows or more
    longest = _record_lengths(embedder)

    got = embedder.embed_audio([short_clip, long_clip], RATE)
    assert longest[0] <= 5.0 * RATE < long_clip.size  # no network call sees more than a window

    pad = embedder._chunk or 1
    want_long = np.asarray(whole(np.pad(long_clip, (0, -long_clip.size % pad))[None]))[0]
    want_short = np.asarray(whole(np.pad(short_clip, (0, -short_clip.size % pad))[None]))[0]
    # Within the bound: the one call of before, bit for bit.
    np.testing.assert_array_equal(got[0], want_short)
    # Beyond it: the same embedding up to float rounding (the windows are other programs).
    # (Windows with two steps of margin instead of the convolutions' reach miss by 2e-4.)
    np.testing.assert_allclose(got[1], want_long, atol=1e-6)
    # The clip's content varies: its start alone embeds elsewhere.
    assert np.max(np.abs(want_long - want_short)) > 1e-3
