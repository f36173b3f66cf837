"""atjax.kernels.layer_norm against autodiff of nnx.LayerNorm: values and all three gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atjax.kernels.layer_norm import layer_norm


def _reference(x, scale, bias, eps, dtype):
    norm = nnx.LayerNorm(x.shape[-1], epsilon=eps, rngs=nnx.Rngs(0))
    norm.scale.set_value(scale)
    norm.bias.set_value(bias)
    return norm(x.astype(jnp.float32)).astype(dtype)


@pytest.mark.parametrize("in_dtype,out_dtype,tol", [
    (jnp.float32, jnp.float32, 2e-5), (jnp.bfloat16, jnp.bfloat16, 1e-2),
    (jnp.bfloat16, jnp.float32, 2e-5)])
def test_matches_autodiff_of_nnx_layer_norm(in_dtype, out_dtype, tol):
    rng = np.random.default_rng(0)
    # Offset rows with a large mean: what a residual stream looks like, and where a
    # variance of E[x^2] - E[x]^2 would cancel.
    x = (rng.normal(size=(3, 7, 96)) * 2.0 + 30.0).astype(np.float32)
    x = jnp.asarray(x).astype(in_dtype)
    scale = jnp.asarray(rng.normal(1.0, 0.3, 96), jnp.float32)
    bias = jnp.asarray(rng.normal(0.0, 0.3, 96), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(3, 7, 96)), jnp.float32)
    eps = 1e-5

    def loss(fn):
        return lambda x, s, b: jnp.sum(fn(x, s, b).astype(jnp.float32) * cotangent)

    ours = loss(lambda x, s, b: layer_norm(x, s, b, eps, out_dtype))
    ref = loss(lambda x, s, b: _reference(x, s, b, eps, out_dtype))
    y, y_ref = (layer_norm(x, scale, bias, eps, out_dtype),
                _reference(x, scale, bias, eps, out_dtype))
    assert y.dtype == out_dtype
    np.testing.assert_allclose(np.float32(y), np.float32(y_ref), atol=tol * 10, rtol=tol)
    grads = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(x, scale, bias)
    grads_ref = jax.grad(ref, argnums=(0, 1, 2))(x, scale, bias)
    for name, g, r in zip(("x", "scale", "bias"), grads, grads_ref):
        assert g.dtype == r.dtype, name
        g, r = np.float32(g), np.float32(r)
        # The input's gradient is rounded to the input's dtype (one bfloat16 step: 4e-3).
        bound = max(tol * 10, 8e-3) if name == "x" and in_dtype == jnp.bfloat16 else tol * 10
        # Relative to the gradient's scale: elementwise rtol is meaningless near zeros.
        assert np.abs(g - r).max() <= bound * np.abs(r).max(), name
        assert np.abs(g).max() > 0, name


def test_gradients_against_finite_differences():
    # Independent of any autodiff: central differences in float64 arithmetic.
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.normal(size=(2, 5)))
        scale, bias = jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.normal(size=5))
        w = jnp.asarray(rng.normal(size=(2, 5)))

        def f(x, s, b):
            return jnp.sum(layer_norm(x, s, b, 1e-5, jnp.float64) * w)

        # layer_norm computes in float32: compare at float32 accuracy.
        grads = jax.grad(f, argnums=(0, 1, 2))(x, scale, bias)
        for i, arg in enumerate((x, scale, bias)):
            flat = np.array(arg, dtype=np.float64).ravel()
            numeric = np.zeros_like(flat)
            for j in range(flat.size):
                step = np.zeros_like(flat)
                step[j] = 1e-2
                args = [x, scale, bias]
                args[i] = jnp.asarray((flat + step).reshape(arg.shape))
                up = float(f(*args))
                args[i] = jnp.asarray((flat - step).reshape(arg.shape))
                numeric[j] = (up - float(f(*args))) / 2e-2
            np.testing.assert_allclose(np.ravel(grads[i]), numeric, atol=2e-3, rtol=2e-3)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_both_forms_of_the_parameter_gradients_agree():
    # The CPU lowering picks the plain sums; GPUs and TPUs the separated two-output
    # reduction. Both run here, against a float64 numpy computation.
    from atjax.kernels import layer_norm as layer_norm_lib

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 6, 40)) + 5.0, jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(4, 6, 40)), jnp.bfloat16)
    x64 = np.asarray(x, np.float64)
    mean = x64.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    g64 = np.asarray(g, np.float64)
    want = ((g64 * (x64 - mean) * rstd).sum((0, 1)), g64.sum((0, 1)))
    args = (g, x, jnp.asarray(mean, jnp.float32), jnp.asarray(rstd, jnp.float32))
    for form in (layer_norm_lib.parameter_grads_fused, layer_norm_lib.parameter_grads_separate):
        got = jax.jit(form)(*args)
        for a, b in zip(got, want):
            assert a.dtype == jnp.float32 and a.shape == (40,)
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-4)
