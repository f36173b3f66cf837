"""A 'same' convolution of a one-channel image, written as a sum over its kernel taps.

PANNs' first convolution maps the log-mel image, one channel, to 64 channels at full
resolution: [B, 1001 frames, 64 mels, 1] -> [B, 1001, 64, 64] for 10 s clips. cuDNN runs
it far slower than its work warrants, in every direction (docs/kernels.md).

`tap_conv` computes the same function without a convolution kernel:
  - forward: each tap's shifted copy of the input times that tap's row of the kernel,
    summed in float32, rounded to the compute dtype and materialised there (behind an
    optimisation barrier): one elementwise pass that writes the output once;
  - input gradient: the output gradient times the transposed kernel, a [pixels, C] x
    [C, taps] matmul that reads the output gradient once, then each tap's column shifted
    back and summed;
  - kernel gradient: the taps' shifted copies of the input against the output gradient,
    a [taps, pixels] x [pixels, C] matmul, batched over blocks of 4,096 pixels so that a
    GPU spreads it over a thousand thread blocks, then the blocks summed.
Whether this beats cuDNN on a given GPU is a measurement (the `tap_conv` kernel of
atjax.kernels picks either form); the values agree to float32 rounding of the sum order.
The barriers keep XLA from storing the forward's float32 sum as the materialised value
(twice the bytes, read again by BatchNorm's statistics).
"""


from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")  # nnx.Conv's layout


def _check(x: jax.Array, kernel: jax.Array) -> tuple[int, int]:
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"tap_conv needs a one-channel NHWC input, got shape {x.shape}")
    if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[0] % 2 == 0 \
            or kernel.shape[1] % 2 == 0:
        raise ValueError("tap_conv needs an HWIO kernel [kh, kw, 1, C] with odd kh and kw, "
                         f"got shape {kernel.shape}")
    return kernel.shape[0], kernel.shape[1]


def reference_conv(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """The convolution `tap_conv` computes, as nnx.Conv(padding=k // 2, no bias) runs it."""
    kh, kw = _check(x, kernel)
    return jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), (1, 1), ((kh // 2,) * 2, (kw // 2,) * 2),
        dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tap_conv(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """x [B, H, W, 1], kernel [kh, kw, 1, C] (odd sizes, zero padding kh // 2 and kw // 2)
    -> [B, H, W, C] in `dtype`; x and kernel are rounded to `dtype` first and the products
    summed in float32, as a `dtype` convolution with float32 accumulation computes it."""
    return _forward(x, kernel, dtype)[0]


def _padded_image(x: jax.Array, kh: int, kw: int, dtype) -> jax.Array:
    """x's one channel rounded to `dtype`, held in float32 (exactly), zero-padded for a
    'same' convolution: [B, H + kh - 1, W + kw - 1]."""
    image = x[..., 0].astype(dtype).astype(jnp.float32)
    return jnp.pad(image, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))


def _forward(x, kernel, dtype):
    kh, kw = _check(x, kernel)
    _, h, w, _ = x.shape
    padded = _padded_image(x, kh, kw, dtype)
    weights = kernel[:, :, 0, :].astype(dtype).astype(jnp.float32)  # [kh, kw, C]
    # Both stored before the taps read them (16 MB and a few hundred numbers). Fused into
    # the taps' kernel, the padding's bounds checks and both roundings ran again for every
    # tap of every output element, and that kernel is bound by its instructions, not by
    # memory (`python -m atjax.bench layer_kernel --layer taps`). Same products, same order.
    padded, weights = jax.lax.optimization_barrier((padded, weights))
    out = sum(padded[:, i:i + h, j:j + w, None] * weights[i, j]
              for i in range(kh) for j in range(kw))
    # Without the barrier XLA may keep the float32 sum as the stored value and fuse the
    # rounding into each consumer: twice the bytes written here and read by every user.
    (out,) = jax.lax.optimization_barrier((out.astype(dtype),))
    return out, (x, kernel, padded)


# Pixels per block of the kernel gradient's matmul: 4,096 rows of [taps] x [C] products per
# block, a thousand blocks for a [64, 1001, 64] image.
_BLOCK_PIXELS = 4096


def _kernel_grad(padded, g, kh: int, kw: int, dtype) -> jax.Array:
    """sum over pixels of patch[pixel, tap] * g[pixel, c] -> [kh, kw, 1, C] float32, from
    the forward's stored padded image (its values are `dtype`'s, so the cast is exact and
    the patches are plain shifted copies, without the padding's bounds checks)."""
    b = padded.shape[0]
    h, w = padded.shape[1] - (kh - 1), padded.shape[2] - (kw - 1)
    channels = g.shape[-1]
    image = padded.astype(dtype)
    patches = jnp.stack([image[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)],
                        axis=-1).reshape(b * h * w, kh * kw)
    rows = g.astype(dtype).reshape(b * h * w, channels)
    pixels = b * h * w
    block = min(_BLOCK_PIXELS, pixels)
    pad = -pixels % block  # zero rows add nothing to the sums
    patches = jnp.pad(patches, ((0, pad), (0, 0))).reshape(-1, block, kh * kw)
    rows = jnp.pad(rows, ((0, pad), (0, 0))).reshape(-1, block, channels)
    partial = jax.lax.dot_general(patches, rows, (((1,), (1,)), ((0,), (0,))),
                                  preferred_element_type=jnp.float32)  # [blocks, taps, C]
    return jnp.sum(partial, axis=0).reshape(kh, kw, 1, channels)


def _backward(dtype, residuals, g):
    x, kernel, image = residuals
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    channels = kernel.shape[-1]
    # Every tap's gradient in one matmul: [B, H, W, C] x [C, kh * kw].
    taps = jax.lax.dot_general(
        g.astype(dtype), kernel.reshape(kh * kw, channels).astype(dtype),
        (((3,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    # Tap (i, j) read padded[:, i + r, j + c] for output (r, c): send its gradient back there.
    padded = sum(jnp.pad(taps[..., i * kw + j], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j)))
                 for i in range(kh) for j in range(kw))
    dx = padded[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w, None]
    dkernel = _kernel_grad(image, g, kh, kw, dtype)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


tap_conv.defvjp(_forward, _backward)
