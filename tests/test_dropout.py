"""atjax.kernels.dropout: 32-bit masks are nnx.Dropout's; 16-bit masks have the stated
statistics."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atjax.kernels import dropout as dropout_lib
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
    from atjax import config as config_lib
    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load(f"{root}/configs/synthetic.py:size=tiny").model
    config.unlock()
    config.text.pretrained = False
    config.kernel_overrides.dropout_mask_bits = 16
    model = nnx.eval_shape(lambda: model_lib.DualEncoder(config, rngs=nnx.Rngs(0)))
    sites = [(p[-1], m) for p, m in model.iter_modules() if isinstance(m, nnx.Dropout)]
    assert len(sites) > 10 and all(isinstance(m, dropout_lib.Dropout) for _, m in sites)
    # Every site but the attention probabilities (one per text layer) takes the setting.
    bits = {name: sorted({m.mask_bits for n, m in sites if n == name}) for name, _ in sites}
    layers = len(model.text_encoder.layers)
    assert sum(n == "attention_dropout" for n, _ in sites) == layers > 0
    assert bits.pop("attention_dropout") == [32]
    assert bits and all(b == [16] for b in bits.values()), bits
    config.kernel_overrides.dropout_mask_bits = 12
    with pytest.raises(ValueError, match="dropout_mask_bits must be 16 or 32"):
        model_lib.DualEncoder(config, rngs=nnx.Rngs(0))
    config.kernel_overrides.dropout_mask_bits = None
    config.kernels = "fast"  # 16-bit masks
    model = nnx.eval_shape(lambda: model_lib.DualEncoder(config, rngs=nnx.Rngs(0)))
    assert {m.mask_bits for p, m in model.iter_modules()
            if isinstance(m, dropout_lib.Dropout) and p[-1] != "attention_dropout"} == {16}


def _threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32, 20 rounds (Salmon et al. 2011), in numpy: the reference."""
    def rotl(v, r):
        return (v << np.uint32(r)) | (v >> np.uint32(32 - r))

    ks = [np.uint32(k1), np.uint32(k2), np.uint32(k1) ^ np.uint32(k2) ^ np.uint32(0x1BD11BDA)]
    x = [x1 + ks[0], x2 + ks[1]]
    rotations = ([13, 15, 26, 6], [17, 29, 16, 24])
    for i in range(5):
        for r in rotations[i % 2]:
            x[0] = x[0] + x[1]
            x[1] = x[0] ^ rotl(x[1], r)
        x[0] = x[0] + ks[(i + 1) % 3]
        x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x


def test_16_bit_draws_are_the_quarters_of_one_threefry_hash_per_group():
    key = jax.random.key(7)
    k1, k2 = np.asarray(jax.random.key_data(key), np.uint32)
    counters = np.arange(40, dtype=np.uint32)
    w1, w2 = _threefry2x32(k1, k2, np.zeros_like(counters), counters)
    # The reference is JAX's hash: its 32-bit draws are the XOR of the two words.
    np.testing.assert_array_equal(np.asarray(jax.random.bits(key, (40,), jnp.uint32)), w1 ^ w2)
    quarters = np.asarray(dropout_lib._threefry_quarters(key, (40, 4)))
    expected = np.stack([w1 & 0xFFFF, w1 >> 16, w2 & 0xFFFF, w2 >> 16], axis=-1)
    np.testing.assert_array_equal(quarters, expected)
    # The mask thresholds those draws, elements 4g .. 4g + 3 of group g in row-major order.
    for shape in [(8, 12), (5, 8, 4), (4, 6), (3, 5, 7), (160,)]:
        size = int(np.prod(shape))
        keep, _ = dropout_lib.keep_mask_16(key, shape, 0.3)
        draws = expected.reshape(-1)[:size].reshape(shape)
        np.testing.assert_array_equal(np.asarray(keep), draws >= round(0.3 * 65536), str(shape))
    # Keys of another PRNG take two sites per jax.random.bits draw, at the same rate.
    rbg, p = dropout_lib.keep_mask_16(jax.random.key(7, impl="rbg"), (256, 64), 0.3)
    assert rbg.shape == (256, 64) and p == 1 - round(0.3 * 65536) / 65536
    assert abs(float(np.mean(np.asarray(rbg))) - p) < 0.02
    # Legacy raw uint32 keys are the default implementation's keys.
    raw, _ = dropout_lib.keep_mask_16(jax.random.key_data(key), (8, 12), 0.3)
    np.testing.assert_array_equal(raw, dropout_lib.keep_mask_16(key, (8, 12), 0.3)[0])


def test_16_bit_mask_is_the_same_under_any_sharding():
    # On 8 devices, with the masked array sharded along its first axis, the mask equals the
    # one computed on a single device: its counters are global indices.
    import os
    import subprocess
    import sys

    code = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from atjax.kernels import dropout
key = jax.random.key(3)
x = jnp.ones((16, 10, 32), jnp.float32)
def apply(x, key):
    keep, p = dropout.keep_mask_16(key, x.shape, 0.2)
    return jax.lax.select(keep, x / p, jnp.zeros_like(x))
single = np.asarray(jax.jit(apply)(x, key))
mesh = Mesh(np.array(jax.devices()), ("data",))
sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
out = jax.jit(apply, out_shardings=NamedSharding(mesh, P("data")))(sharded, key)
assert len(out.sharding.device_set) == 8
np.testing.assert_array_equal(np.asarray(out), single)
print("OK", float((single == 0).mean()))
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("mask_bits", [32, 16])
@pytest.mark.parametrize("rate", [0.1, 0.37])
def test_keep_mask_is_the_mask_the_call_applies(mask_bits, rate):
    # atjax.kernels.attention applies the mask inside its kernel: it must be the one the module's
    # own call would apply, drawn from the same key, with the stream advanced alike.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 8, 8)), jnp.float32)
    called = dropout_lib.Dropout(rate, mask_bits=mask_bits, rngs=nnx.Rngs(dropout=7))
    drawn = dropout_lib.Dropout(rate, mask_bits=mask_bits, rngs=nnx.Rngs(dropout=7))

    @jax.jit
    def apply(x, keep, keep_prob):
        return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))

    for _ in range(2):
        keep, keep_prob = drawn.keep_mask(x.shape)
        assert keep.dtype == jnp.bool_ and keep.shape == x.shape
        np.testing.assert_array_equal(apply(x, keep, keep_prob), called(x))
        assert 0.5 < float(np.mean(np.asarray(keep))) < 0.95
    other = dropout_lib.Dropout(rate, mask_bits=mask_bits, rngs=nnx.Rngs(dropout=8))
    assert not np.array_equal(other.keep_mask(x.shape)[0], keep)


def test_keep_mask_under_jit_broadcast_dims_and_edge_cases():
    x = jnp.ones((2, 6, 5), jnp.float32)
    called = dropout_lib.Dropout(0.5, broadcast_dims=(1,), rngs=nnx.Rngs(dropout=3))
    drawn = dropout_lib.Dropout(0.5, broadcast_dims=(1,), rngs=nnx.Rngs(dropout=3))
    keep, keep_prob = nnx.jit(lambda m: m.keep_mask((2, 6, 5)))(drawn)
    np.testing.assert_array_equal(jnp.where(keep, x / keep_prob, 0), called(x))
    assert np.all(np.asarray(keep) == np.asarray(keep)[:, :1, :])  # one draw along axis 1
    drawn.eval()
    assert drawn.keep_mask((2, 3)) == (None, 1.0)
    assert dropout_lib.Dropout(0.0, rngs=nnx.Rngs(0)).keep_mask((2, 3)) == (None, 1.0)
    everything = dropout_lib.Dropout(1.0, rngs=nnx.Rngs(dropout=0))
    keep, keep_prob = everything.keep_mask((2, 3))
    assert not np.any(np.asarray(keep)) and keep_prob == 1.0
    with pytest.raises(ValueError, match="no rngs"):
        dropout_lib.Dropout(0.1, mask_bits=16).keep_mask((2, 3))
