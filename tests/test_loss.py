import jax.numpy as jnp
import numpy as np
import pytest

from atjax import loss as loss_lib


def _reference(audio, text, scale):
    """InfoNCE written out with explicit loops over rows and columns."""
    a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    n = a.shape[0]
    sim = np.array([[scale * float(a[i] @ t[j]) for j in range(n)] for i in range(n)])
    a2t = np.mean([-(sim[i, i] - np.log(np.sum(np.exp(sim[i])))) for i in range(n)])
    t2a = np.mean([-(sim[j, j] - np.log(np.sum(np.exp(sim[:, j])))) for j in range(n)])
    return 0.5 * (a2t + t2a), a2t, t2a


@pytest.mark.parametrize("batch,dim,scale", [(2, 3, 1.0), (7, 16, 14.3), (16, 8, 100.0)])
def test_info_nce_matches_reference(batch, dim, scale):
    rng = np.random.default_rng(batch)
    audio = rng.standard_normal((batch, dim)).astype(np.float32)
    text = rng.standard_normal((batch, dim)).astype(np.float32) * 3.0
    loss, metrics = loss_lib.info_nce(jnp.asarray(audio), jnp.asarray(text), jnp.float32(scale))
    ref, a2t, t2a = _reference(audio.astype(np.float64), text.astype(np.float64), scale)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["loss_audio_to_text"]), a2t, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["loss_text_to_audio"]), t2a, rtol=1e-4)


def test_info_nce_is_scale_invariant_in_inputs_and_rewards_alignment():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    aligned, _ = loss_lib.info_nce(jnp.asarray(x), jnp.asarray(5 * x), jnp.float32(20.0))
    shuffled, _ = loss_lib.info_nce(jnp.asarray(x), jnp.asarray(x[::-1].copy()), jnp.float32(20.0))
    assert float(aligned) < float(shuffled)
    scaled, _ = loss_lib.info_nce(jnp.asarray(3 * x), jnp.asarray(x), jnp.float32(20.0))
    np.testing.assert_allclose(float(aligned), float(scaled), rtol=1e-5)


def test_bfloat16_inputs_are_computed_in_float32():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 16)).astype(np.float32)
    t = rng.standard_normal((8, 16)).astype(np.float32)
    full, _ = loss_lib.info_nce(jnp.asarray(a), jnp.asarray(t), jnp.float32(10.0))
    half, _ = loss_lib.info_nce(jnp.asarray(a, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16),
                                jnp.float32(10.0))
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(float(half), float(full), rtol=2e-2)
