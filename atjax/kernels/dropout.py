"""Dropout whose mask can be drawn from 16 random bits per element.

`Dropout` is `nnx.Dropout` (same state, same `rngs` stream, same switch by `.train()` /
`.eval()`) with one setting, `mask_bits`, chosen at construction:

  32 (default): exactly nnx.Dropout, one 32-bit draw per element.
  16: one threefry2x32 hash (64 bits) decides four neighbouring elements, 16 bits each.
      The drop probability becomes round(rate * 2**16) / 2**16 (0.1 -> 0.1000061, 0.2 ->
      0.1999969, 0.5 exact), and the kept values are scaled by the inverse of that keep
      probability, so the expectation is exact.

Why: with JAX's default PRNG (threefry2x32, partitionable) every draw costs one full
threefry hash, and the dropout-mask kernels of ResNet38 on GPUs are compute-bound on that
hashing (docs/kernels.md). The hash gives 64 bits, of which a 32-bit draw keeps the XOR
of the two words.

How the 16-bit mask stays inside one kernel: the elements are grouped in fours in
row-major order, and the mask is computed on the input viewed as [..., last / 4, 4], with
each group's counter built from iotas over the leading axes only. XLA then fuses the hash
into the kernel that applies the mask, and since its GPU loop kernels handle four
neighbouring elements per thread, the four identical hashes of a group are one
computation after LLVM's common-subexpression elimination: a quarter of the hashing
(`python -m atjax.bench dropout_kernel --target h200` counts the instructions). Drawing
the bits with `jax.random.bits` instead made XLA write them to memory and read them back.

Keys of other PRNG implementations (the `rng_impl` kernel, e.g. rbg) take the bits of
`jax.random.bits` instead, two elements per 32-bit draw. Either way the mask is a pure
function of the key and the shape, whatever the sharding.
"""


from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.extend.random import threefry2x32_p

MASK_BITS = (16, 32)


def check_mask_bits(mask_bits) -> int:
    if isinstance(mask_bits, bool) or mask_bits not in MASK_BITS:
        raise ValueError(f"dropout mask_bits must be one of {MASK_BITS}, got {mask_bits!r}")
    return int(mask_bits)


def _group_counters(shape: tuple[int, ...]) -> jax.Array:
    """uint32 array of `shape` (last axis 4): each entry's row-major index over the
    leading axes, i.e. the index of its group of four. Built from iotas, so XLA fuses it."""
    counters = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape) - 1)):
        counters = counters + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return counters


def _threefry_quarters(key: jax.Array, grouped: tuple[int, ...]) -> jax.Array:
    """16-bit draws (as uint32) for `grouped` ([..., 4]): group g's four entries are the low
    and high halves of the two words of one threefry2x32 hash of counter (0, g)."""
    k1, k2 = jax.random.key_data(key)
    counters = _group_counters(grouped)
    word1, word2 = threefry2x32_p.bind(k1, k2, jnp.zeros_like(counters), counters)
    lane = lax.broadcasted_iota(jnp.uint32, grouped, len(grouped) - 1)
    word = jnp.where(lane < 2, word1, word2)
    return jnp.where(lane % 2 == 0, word & jnp.uint32(0xFFFF), word >> jnp.uint32(16))


def keep_mask_16(key: jax.Array, shape: tuple[int, ...], rate: float) -> tuple[jax.Array, float]:
    """(keep mask of `shape`, keep probability) from 16 bits per element.

    With a threefry2x32 key, elements 4g .. 4g + 3 in row-major order take the four 16-bit
    halves of hash g (see the module doc). With another PRNG, element i of the last axis
    takes the low half of draw i for i < ceil(n / 2) and the high half of draw
    i - ceil(n / 2) after that.
    """
    threshold = jnp.uint32(round(rate * 65536))
    keep_prob = 1.0 - round(rate * 65536) / 65536
    size = math.prod(shape)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32 key
        key = jax.random.wrap_key_data(key)
    if str(jax.random.key_impl(key)) == "threefry2x32":
        if -(-size // 4) >= 2**32:
            raise ValueError(f"a 16-bit dropout mask counts its groups in 32 bits: {shape} "
                             "has too many elements")
        last = shape[-1] if shape else 1
        if shape and last % 4 == 0:  # the mask in the input's own layout: one fused kernel
            grouped = tuple(shape[:-1]) + (last // 4, 4)
            return _threefry_quarters(key, grouped).reshape(shape) >= threshold, keep_prob
        flat = _threefry_quarters(key, (-(-size // 4), 4)).reshape(-1)[:size]
        return flat.reshape(shape) >= threshold, keep_prob
    last = shape[-1] if shape else 1
    half = -(-last // 2)
    bits = jax.random.bits(key, tuple(shape[:-1]) + (half,), jnp.uint32)
    halves = jnp.concatenate([bits & jnp.uint32(0xFFFF), bits >> jnp.uint32(16)], axis=-1)
    return halves[..., :last].reshape(shape) >= threshold, keep_prob


class Dropout(nnx.Dropout):
    """nnx.Dropout with `mask_bits` (32: nnx.Dropout itself; 16: see the module doc)."""

    def __init__(self, rate: float, *, mask_bits: int = 32, **kwargs):
        super().__init__(rate, **kwargs)
        self.mask_bits = check_mask_bits(mask_bits)

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        if self.mask_bits == 32 or self.broadcast_dims:
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        keep, keep_prob = self.keep_mask(inputs.shape, deterministic=deterministic, rngs=rngs)
        if keep is None:
            return inputs
        return jax.lax.select(keep, inputs / keep_prob, jnp.zeros_like(inputs))

    def keep_mask(self, shape: tuple[int, ...], *, deterministic: bool | None = None,
                  rngs=None) -> tuple[jax.Array | None, float]:
        """(keep, keep_prob): the mask that `self(x)` applies to an `x` of `shape`, as
        `select(keep, x / keep_prob, 0)`, drawn from the same key (the stream advances as
        that call would advance it), for a caller that applies it inside its own kernel
        (`atjax.kernels.attention`). (None, 1.0) where the call returns `x` unchanged; an all-False
        mask at rate 1. `self(x)` is exactly `select(keep, x / keep_prob, 0)`."""
        deterministic = self.deterministic if deterministic is None else deterministic
        if self.rate == 0.0 or deterministic:
            return None, 1.0
        if self.rate == 1.0:  # as nnx.Dropout: zeros, and no key drawn
            return jnp.zeros(shape, bool), 1.0
        key = self._key(rngs)
        if self.mask_bits == 16 and not self.broadcast_dims:
            return keep_mask_16(key, tuple(shape), self.rate)
        keep_prob = 1.0 - self.rate  # nnx.Dropout's draw, bit for bit
        drawn = [1 if axis in self.broadcast_dims else n for axis, n in enumerate(shape)]
        keep = jax.random.bernoulli(key, p=keep_prob, shape=tuple(drawn))
        return jnp.broadcast_to(keep, tuple(shape)), keep_prob

    def _key(self, rngs) -> jax.Array:
        """The key for one mask, drawn as nnx.Dropout draws it."""
        stream = self.rngs if rngs is None else rngs
        if isinstance(stream, nnx.Rngs):
            return stream[self.rng_collection]()
        if isinstance(stream, jax.Array):
            return stream
        if stream is None:
            raise ValueError("Dropout is not deterministic but has no rngs to draw a mask from")
        return stream()  # an RngStream
