"""The exact (erf-form) GELU of BERT and RoBERTa, with a cheaper erfc for bfloat16 inputs.

`gelu(x)` computes what `jax.nn.gelu(x, approximate=False)` computes, x/2 * erfc(-x/sqrt 2),
op for op in x's dtype, except how erfc's float32 value is found when x is bfloat16:
  - `lax.erfc` evaluates two rational approximations (|x| < 1 and beyond) and an exp for
    every element and selects one; the GPU kernel of a bfloat16 GELU fused after a large
    matmul is then bound by its instructions (docs/kernels.md);
  - here erfc is one formula for all z = |x|: t = 1 / (1 + z/2),
    erfc(z) = t exp(-z^2 + P(t)), P of degree 9, and 2 - erfc(z) for negative x (the
    Chebyshev fit of Press et al., Numerical Recipes, sec. 6.2: relative error under
    1.2e-7 in exact arithmetic). Computed in float32 it is within 5e-6 (relative) of
    the true erfc on [-9, 9], no further than `lax.erfc` is, and for every finite
    bfloat16 input the GELU and its derivative are bit for bit those of `jax.nn.gelu`
    on XLA:CPU (tests/test_gelu.py; on a GPU, whose exp differs in the last float32
    bits, a rare value near a bfloat16 rounding boundary may round the other way), in
    fewer instructions per element (`python -m atjax.bench layer_kernel --layer gelu`).
Other dtypes keep `lax.erfc`: float16's longer mantissa tells the two apart (by one ulp
at -2.217, tests/test_gelu.py), and float32's more so.

The derivative is erfc's own (-2/sqrt(pi) exp(-x^2)), written as JAX writes it for
`lax.erfc`, so autodiff gives the GELU's exact derivative, not the approximation's.
"""


from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# P(t) = c0 + c1 t + ... + c9 t^9 in erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2).
_ERFC_COEFFICIENTS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
                      0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def _erfc_float32(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    z = jnp.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = jnp.float32(_ERFC_COEFFICIENTS[-1])
    for c in _ERFC_COEFFICIENTS[-2::-1]:  # Horner
        poly = poly * t + c
    tail = t * jnp.exp(poly - z * z)
    return jnp.where(x >= 0, tail, 2.0 - tail)


@jax.custom_jvp
def erfc(x: jax.Array) -> jax.Array:
    """erfc(x) in x's dtype, evaluated in float32 by one formula (see the module doc)."""
    return _erfc_float32(x).astype(x.dtype)


@erfc.defjvp
def _erfc_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # lax.erfc's derivative, in x's dtype and in its order of operations.
    scale = jnp.asarray(-2.0 / np.sqrt(np.pi), x.dtype)
    return erfc(x), scale * (dx * jnp.exp(-(x * x)))


def gelu(x: jax.Array) -> jax.Array:
    """x/2 * erfc(-x/sqrt(2)) as `jax.nn.gelu(x, approximate=False)` computes it; bfloat16
    inputs take `erfc` above for the float32 erfc inside."""
    x = jnp.asarray(x)
    if x.dtype != jnp.bfloat16:
        return jax.nn.gelu(x, approximate=False)
    sqrt_half = np.sqrt(0.5).astype(x.dtype)
    return 0.5 * x * erfc(-x * sqrt_half)
