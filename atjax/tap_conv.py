"""A 'same' convolution of a one-channel image, written as a sum over its kernel taps.

PANNs' first convolution maps the log-mel image, one channel, to 64 channels at full
resolution: [B, 1001 frames, 64 mels, 1] -> [B, 1001, 64, 64] for 10 s clips. As cuDNN ran
it on an H200 it was the slowest convolution of the step for its work: 0.78 ms forward,
0.84 ms for the input gradient and 0.51 ms for the kernel gradient, 2.1 ms for 4.7 GFLOP,
where one write or read of its bfloat16 output takes about 0.13 ms (read from the profile
of `python -m atjax.bench profile`, 2026-11-26; the next convolution, 64 -> 64 channels on
the same image, does 64 times the work in 0.59 ms).

`tap_conv` computes the same function without a convolution kernel:
  - forward: each tap's shifted copy of the input times that tap's row of the kernel,
    summed in float32: elementwise work that writes the output once;
  - input gradient: the output gradient times the transposed kernel, a [pixels, C] x
    [C, taps] matmul that reads the output gradient once, then each tap's column shifted
    back and summed;
  - kernel gradient: the convolution's own transpose (cuDNN's backward-filter kernel on
    GPUs), which did its share of the work at a reasonable rate.
Whether this beats cuDNN on a given GPU is a measurement (`model.audio.stem_conv` picks
either form); the values agree to float32 rounding of the sum order.
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


def _forward(x, kernel, dtype):
    kh, kw = _check(x, kernel)
    _, h, w, _ = x.shape
    image = x[..., 0].astype(dtype).astype(jnp.float32)
    padded = jnp.pad(image, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    weights = kernel[:, :, 0, :].astype(dtype).astype(jnp.float32)  # [kh, kw, C]
    out = sum(padded[:, i:i + h, j:j + w, None] * weights[i, j]
              for i in range(kh) for j in range(kw))
    return out.astype(dtype), (x, kernel)


def _backward(dtype, residuals, g):
    x, kernel = residuals
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
    # The kernel gradient is linear in g: the convolution's transpose with respect to it.
    (dkernel,) = jax.linear_transpose(
        lambda k: reference_conv(x, k, dtype), kernel.astype(dtype))(g.astype(dtype))
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


tap_conv.defvjp(_forward, _backward)
