"""atjax.dropout: 32-bit masks are nnx.Dropout's; 16-bit masks have the stated statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atjax import dropout as dropout_lib
from atjax import model as model_lib


def test_32_bits_is_nnx_dropout():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7, 33)), jnp.float32)
    ours = dropout_lib.Dropout(0.3, rngs=nnx.Rngs(dropout=5))
    theirs = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=5))
    for _ in range(2):  # the streams advance alike
        np.testing.assert_array_equal(ours(x), theirs(x))


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5])
def test_16_bit_masks_drop_at_the_quantised_rate_and_keep_the_mean(rate):
    layer = dropout_lib.Dropout(rate, mask_bits=16, rngs=nnx.Rngs(dropout=1))
    x = jnp.ones((64, 125, 33), jnp.float32)  # odd last axis: one draw's high half unused
    y = np.asarray(jax.jit(lambda m, x: m(x))(layer, x))
    q = round(rate * 65536) / 65536
    dropped = np.mean(y == 0)
    n = y.size
    assert abs(dropped - q) < 5 * np.sqrt(q * (1 - q) / n)  # binomial: 5 sigma
    np.testing.assert_allclose(np.unique(y[y != 0]), [1 / (1 - q)], rtol=1e-6)
    assert abs(y.mean() - 1.0) < 5 * np.sqrt(q / (1 - q) / n)


def test_16_bit_halves_are_independent_and_keys_matter():
    shape = (4096, 64)
    keep, _ = dropout_lib.keep_mask_16(jax.random.key(0), shape, 0.5)
    keep = np.asarray(keep, np.float64)
    low, high = keep[:, :32], keep[:, 32:]  # the two halves of the same draws
    assert abs(np.corrcoef(low.ravel(), high.ravel())[0, 1]) < 0.02
    other, _ = dropout_lib.keep_mask_16(jax.random.key(1), shape, 0.5)
    assert np.mean(np.asarray(other) == keep.astype(bool)) < 0.52
    again, _ = dropout_lib.keep_mask_16(jax.random.key(0), shape, 0.5)
    np.testing.assert_array_equal(np.asarray(again), keep.astype(bool))


def test_16_bits_in_eval_mode_bfloat16_and_edge_rates():
    x = jnp.ones((3, 5), jnp.bfloat16)
    layer = dropout_lib.Dropout(0.2, mask_bits=16, rngs=nnx.Rngs(dropout=0))
    layer.eval()
    assert layer(x) is x
    layer.train()
    y = layer(x)
    assert y.dtype == jnp.bfloat16 and y.shape == x.shape
    assert np.all(np.asarray(dropout_lib.Dropout(1.0, mask_bits=16, rngs=nnx.Rngs(dropout=0))(x)) == 0)
    np.testing.assert_array_equal(dropout_lib.Dropout(0.0, mask_bits=16, rngs=nnx.Rngs(0))(x), x)
    with pytest.raises(ValueError, match="mask_bits"):
        dropout_lib.Dropout(0.1, mask_bits=8, rngs=nnx.Rngs(0))


def test_the_model_setting_reaches_every_dropout_site():
    import importlib
    synthetic = importlib.import_module("configs.synthetic")
    config = synthetic.get_config("size=tiny").model
    config.unlock()
    config.text.pretrained = False
    config.dropout_mask_bits = 16
    model = nnx.eval_shape(lambda: model_lib.DualEncoder(config, rngs=nnx.Rngs(0)))
    sites = [m for _, m in model.iter_modules() if isinstance(m, nnx.Dropout)]
    assert len(sites) > 10
    assert all(isinstance(m, dropout_lib.Dropout) and m.mask_bits == 16 for m in sites)
    config.dropout_mask_bits = 12
    with pytest.raises(ValueError, match="mask_bits"):
        model_lib.DualEncoder(config, rngs=nnx.Rngs(0))
