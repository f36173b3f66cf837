"""atjax.kernels.gelu: the erfc formula against float64 erfc, and the GELU against jax.nn.gelu on
every finite bfloat16 value (values and derivatives, bit for bit)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from atjax.kernels import gelu as gelu_lib


def _exact_gelu(x):
    return jax.nn.gelu(x, approximate=False)


def _every_finite(dtype):
    x = jnp.asarray(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype))
    return x[jnp.isfinite(x)]


def _bits(x):
    return np.asarray(x).view(np.uint16)


def test_erfc_formula_is_as_close_to_erfc_as_lax():
    x = np.linspace(-9.0, 9.0, 180_001).astype(np.float32)
    want = np.array([math.erfc(float(v)) for v in x])
    got = np.asarray(jax.jit(gelu_lib._erfc_float32)(x), np.float64)
    lax = np.asarray(jax.jit(jax.lax.erfc)(jnp.asarray(x)), np.float64)
    relative = np.abs(got - want) / want
    assert relative.max() < 5e-6
    assert relative.max() < 1.1 * (np.abs(lax - want) / want).max()
    assert got[0] == 2.0 and 0 < got[-1] < 1e-35  # the tails: 2, and tiny but not zero


def test_bfloat16_gelu_and_derivative_are_jax_nn_gelu_bit_for_bit():
    x = _every_finite(jnp.bfloat16)
    assert x.size == 65_280
    np.testing.assert_array_equal(_bits(jax.jit(gelu_lib.gelu)(x)),
                                  _bits(jax.jit(_exact_gelu)(x)))
    slope = jax.jit(jax.vmap(jax.grad(gelu_lib.gelu)))
    exact_slope = jax.jit(jax.vmap(jax.grad(_exact_gelu)))
    np.testing.assert_array_equal(_bits(slope(x)), _bits(exact_slope(x)))
    # The derivative is the GELU's, not the formula's: at 0 it is 1/2, at 1 Phi(1) + phi(1).
    at = jnp.asarray([0.0, 1.0], jnp.float32)
    want = [0.5, 0.5 * math.erfc(-1 / math.sqrt(2)) + math.exp(-0.5) / math.sqrt(2 * math.pi)]
    np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(gelu_lib.gelu))(at)), want,
                               rtol=1e-6)


def test_other_dtypes_keep_lax_erfc():
    # float16 tells the two erfc apart (one ulp) at -2.217; float32 at many points. Both
    # take jax.nn.gelu itself.
    for x in (_every_finite(jnp.float16),
              jnp.asarray(np.random.default_rng(0).normal(size=10_000) * 4, jnp.float32)):
        np.testing.assert_array_equal(np.asarray(jax.jit(gelu_lib.gelu)(x)),
                                      np.asarray(jax.jit(_exact_gelu)(x)))
    x16 = jnp.asarray([-2.217], jnp.float16)
    formula = (0.5 * x16 * gelu_lib.erfc(-x16 * np.sqrt(0.5).astype(np.float16)))
    assert _bits(formula)[0] != _bits(_exact_gelu(x16))[0]


def test_text_encoder_uses_it_for_bert_and_roberta_when_chosen():
    from atjax import kernels
    from atjax.encoders import bert

    assert bert._activation("gelu", kernels.choose("fast")) is gelu_lib.gelu
    reference = bert._activation("gelu", kernels.choose("reference"))
    assert reference is not gelu_lib.gelu
    x = jnp.linspace(-4.0, 4.0, 101)
    np.testing.assert_array_equal(np.asarray(reference(x)), np.asarray(_exact_gelu(x)))
    assert all(c.hidden_act == "gelu" for c in bert.PRESETS.values())
