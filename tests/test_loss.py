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


def _bfloat16_info_nce(audio, text, logit_scale, *, only_logits=False):
    """InfoNCE with the precision loss a float32 loss must not have: wholly in bfloat16
    and cast at the end, or (`only_logits`) normalised in float32 and multiplied in
    bfloat16. For the test below to show that it tells these apart."""
    import jax
    import optax

    bf16 = jnp.bfloat16
    if only_logits:
        a = loss_lib.l2_normalize(audio).astype(bf16)
        t = loss_lib.l2_normalize(text).astype(bf16)
        logits = logit_scale.astype(jnp.float32) * (a @ t.T).astype(jnp.float32)
    else:
        a, t = audio.astype(bf16), text.astype(bf16)
        a = a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True))
        t = t * jax.lax.rsqrt(jnp.sum(t * t, axis=-1, keepdims=True))
        logits = logit_scale.astype(bf16) * (a @ t.T)
    labels = jnp.arange(logits.shape[0])
    loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
    return loss.astype(jnp.float32)


def test_bfloat16_inputs_are_computed_in_float32():
    # bfloat16 embeddings (as the model emits them in bfloat16 compute) hold exact values;
    # computed in float32, the loss of those values is the float64 reference's to ~1e-7.
    # In bfloat16 (8 significant bits) the logits alone are off by ~1e-2 at this scale.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 64)).astype(np.float32)
    t = (a + 2.0 * rng.standard_normal((32, 64))).astype(np.float32)
    audio, text, scale = jnp.asarray(a, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16), 14.3
    ref, a2t, t2a = _reference(np.asarray(audio, np.float64), np.asarray(text, np.float64), scale)
    rtol = 1e-5

    def close(value, expected):
        return abs(float(value) - expected) <= rtol * abs(expected)

    loss, metrics = loss_lib.info_nce(audio, text, jnp.float32(scale))
    assert loss.dtype == jnp.float32
    assert close(loss, ref), (float(loss), ref)
    assert close(metrics["loss_audio_to_text"], a2t) and close(metrics["loss_text_to_audio"], t2a)
    # The check fails a loss computed in bfloat16, wholly or in its logits only.
    for only_logits in (False, True):
        worse = _bfloat16_info_nce(audio, text, jnp.float32(scale), only_logits=only_logits)
        assert worse.dtype == jnp.float32 and not close(worse, ref), (only_logits, float(worse))
