"""Per-feature sums over every row of [..., features] arrays, in float32, shaped for GPUs.

Parameter gradients of per-feature parameters are such sums: a dense layer's bias gradient
sums the output gradient over every token, a LayerNorm's scale and bias gradients sum over
every token too. Under plain autodiff XLA emits each as one column reduction, which on
GPUs gives each slab of 32 features to one thread block that walks every row: over 1024
features, 32 blocks, most of the GPU idle (docs/kernels.md).

So on GPUs `column_sums` sums rows in blocks of `block_rows` first (features / 32 x blocks
thread blocks), writes the partial sums out behind an optimisation barrier (XLA's
simplifier would otherwise merge the two reductions back into one), then adds the blocks.
Several arrays are summed by one variadic reduction, so their shared inputs are read once.
Elsewhere the sums stay plain: XLA:CPU runs variadic reductions unvectorised, and TPUs were
not measured.
"""


from __future__ import annotations

import jax
import jax.numpy as jnp

BLOCK_ROWS = 128  # rows per partial sum: 2048 tokens give 16 blocks, 512 thread blocks


def column_sums(*arrays: jax.Array, block_rows: int = BLOCK_ROWS) -> tuple[jax.Array, ...]:
    """For each [..., features] array (all of one shape), its float32 sum over every axis
    but the last. On GPUs a two-stage reduction (see the module doc); elsewhere plain sums."""
    if not arrays:
        raise ValueError("column_sums needs at least one array")
    shape = arrays[0].shape
    if not shape or any(a.shape != shape for a in arrays):
        raise ValueError(f"column_sums needs arrays of one shape [..., features], got "
                         f"{[a.shape for a in arrays]}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be positive, got {block_rows}")
    arrays = tuple(a.astype(jnp.float32) for a in arrays)
    return jax.lax.platform_dependent(
        *arrays, default=plain_sums,
        cuda=lambda *a: blocked_sums(*a, block_rows=block_rows),
        rocm=lambda *a: blocked_sums(*a, block_rows=block_rows))


def plain_sums(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """One sum per array over its leading axes: what autodiff would emit."""
    return tuple(jnp.sum(a, axis=tuple(range(a.ndim - 1))) for a in arrays)


def blocked_sums(*arrays: jax.Array, block_rows: int = BLOCK_ROWS) -> tuple[jax.Array, ...]:
    """Rows summed in blocks of `block_rows` (zero rows pad the last block), the partial
    sums materialised, then summed: the same sums in another order."""
    features = arrays[0].shape[-1]
    rows = arrays[0].size // max(features, 1)
    if rows < 2 * block_rows:  # one block: nothing to split
        return plain_sums(*arrays)
    blocks = -(-rows // block_rows)
    pad = blocks * block_rows - rows

    def split(a):
        a = a.reshape(rows, features)
        if pad:
            a = jnp.pad(a, ((0, pad), (0, 0)))
        return a.reshape(blocks, block_rows, features)

    zero = jnp.zeros((), jnp.float32)
    partial = jax.lax.reduce(tuple(split(a) for a in arrays), (zero,) * len(arrays),
                             lambda x, y: tuple(p + q for p, q in zip(x, y)), (1,))
    partial = jax.lax.optimization_barrier(tuple(partial))
    return tuple(jnp.sum(p, axis=0) for p in partial)
