"""LayerNorm over the last axis in float32, with a backward pass written for XLA's GPU fusion.

Same function as `nnx.LayerNorm` on float32 input (statistics in float32 whatever the
input dtype; mean and variance in two passes), returning `dtype`. The backward pass is
written out (`jax.custom_vjp`) because under autodiff XLA on GPUs fused the column sums
of the parameter gradients (over every token) into the kernel of the row-wise input
gradient, which then ran at a fraction of memory bandwidth. Here the parameter gradients
read their inputs through `lax.optimization_barrier`, which gives them no operand in
common with the input gradient's kernels, so XLA cannot fuse them; they are one
two-output reduction in two stages (`atjax.kernels.column_sum`). On CPUs
(`lax.platform_dependent`) they stay two plain sums: XLA:CPU fuses those well and runs
variadic reductions unvectorised. Measurements: docs/kernels.md.

The input gradient is the standard one: with x^ = (x - mean) * rstd and dx^ = g * scale,
dx = rstd * (dx^ - mean(dx^) - x^ * mean(dx^ * x^)).
"""


from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from atjax.kernels.column_sum import column_sums, plain_sums


def _statistics(x32: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return mean, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
               dtype) -> jax.Array:
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis, computed in
    float32 and returned as `dtype`. `scale` and `bias` are [features] float32."""
    return _forward(x, scale, bias, epsilon, dtype)[0]


def _forward(x, scale, bias, epsilon, dtype):
    x32 = x.astype(jnp.float32)
    mean, rstd = _statistics(x32, epsilon)
    y = ((x32 - mean) * rstd * scale + bias).astype(dtype)
    return y, (x, scale, mean, rstd)


def parameter_grads_fused(g, x, mean, rstd):
    """(d scale, d bias): column sums over every token, as plain sums (for XLA:CPU, which
    fuses these well and runs variadic reductions unvectorised: the built-in task's step
    was visibly slower with the other form)."""
    g32 = g.astype(jnp.float32)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    return plain_sums(g32 * xhat, g32)


def parameter_grads_separate(g, x, mean, rstd):
    """(d scale, d bias) from inputs behind a barrier (see the module doc), by
    `atjax.kernels.column_sum`: on GPUs one two-output reduction in two stages (two separate sums
    let XLA:GPU fuse one of them with the other's elementwise input and write that
    [tokens, features] float32 product out, and a single-stage sum over 2048 tokens keeps
    most of a GPU idle); elsewhere plain sums."""
    gb, xb, meanb, rstdb = jax.lax.optimization_barrier((g, x, mean, rstd))
    gb32 = gb.astype(jnp.float32)
    return column_sums(gb32 * ((xb.astype(jnp.float32) - meanb) * rstdb), gb32)


def _backward(epsilon, dtype, residuals, g):
    del epsilon, dtype
    x, scale, mean, rstd = residuals
    x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
    xhat = (x32 - mean) * rstd
    dxhat = g32 * scale
    dx = rstd * (dxhat - jnp.mean(dxhat, axis=-1, keepdims=True)
                 - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
    dscale, dbias = jax.lax.platform_dependent(
        g, x, mean, rstd, cpu=parameter_grads_fused, default=parameter_grads_separate)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


layer_norm.defvjp(_forward, _backward)
