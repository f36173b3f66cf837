"""A 'same' NHWC x OHWI convolution whose kernel gradient comes out in the kernel's layout.

ResNet38's conv_block_after1 runs two 3x3 convolutions on a tiny image (10 s clips:
[B, 31 frames, 2 mels, 512 or 2048 channels]). For their kernel gradients XLA:GPU does not
use cuDNN's backward-filter convolution, as it does for every other convolution of the
network: it emits a forward convolution with the image's channels as its batch, whose
result is [in, kh, kw, out] (IHWO), and then transposes that into the kernel's OHWI inside
the optimizer's kernels, which then move far more memory than the updates need.

`ohwi_conv` computes the same convolution. Its backward pass takes the input gradient by
autodiff and, on CUDA GPUs, the kernel gradient as the same forward convolution with the
roles swapped: the output gradient's channels are the batch, so the result is [out, kh,
kw, in], the kernel's own layout, with its window reversed (a reversal of the 3 x 3 axes,
which XLA folds into the reader). The cuDNN problem is the transposed one of the same size
(for 2048 -> 2048 channels, the same shape), and the transposes move to the activations,
8-40 MB each, written beside the layout XLA already writes (docs/kernels.md). Elsewhere
the kernel gradient is autodiff's, so CPU results are unchanged to the bit. Both forms
compute the same sums in another order.
"""


from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_DIMENSIONS = ("NHWC", "OHWI", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    pad = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def ohwi_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """x [B, H, W, in] * kernel [out, kh, kw, in], stride 1, zero padding `padding` on each
    side of H and W; x and kernel of one dtype. The same function as
    `lax.conv_general_dilated` with dimension numbers (NHWC, OHWI, NHWC)."""
    _check(x, kernel, padding)
    return _conv(x, kernel, padding)


def _check(x: jax.Array, kernel: jax.Array, padding: int) -> None:
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[3] != x.shape[3]:
        raise ValueError(f"ohwi_conv needs x [B, H, W, in] and kernel [out, kh, kw, in], got "
                         f"{x.shape} and {kernel.shape}")
    if kernel.shape[1] != 2 * padding + 1 or kernel.shape[2] != 2 * padding + 1:
        raise ValueError(f"ohwi_conv computes 'same' convolutions: a {kernel.shape[1]} x "
                         f"{kernel.shape[2]} kernel with padding {padding}")


def swapped_kernel_grad(x: jax.Array, g: jax.Array, padding: int) -> jax.Array:
    """d(sum(g * conv(x, kernel))) / d kernel as [out, kh, kw, in]: the convolution of the
    padded output gradient (batch: its channels; features: the images) with x as the
    window, which gives dk[o, padding - dy, padding - dx, i]; hence the reversal."""
    pad = ((padding, padding), (padding, padding))
    reversed_grad = jax.lax.conv_general_dilated(
        g, x, (1, 1), pad, dimension_numbers=("CHWN", "IHWO", "NHWC"))
    return jnp.flip(reversed_grad, (1, 2))


def autodiff_kernel_grad(x: jax.Array, kernel: jax.Array, g: jax.Array,
                         padding: int) -> jax.Array:
    """The kernel gradient as `jax.vjp` of the convolution gives it."""
    _, vjp = jax.vjp(lambda k: _conv(x, k, padding), kernel)
    return vjp(g)[0]


def _forward(x, kernel, padding):
    return ohwi_conv(x, kernel, padding), (x, kernel)


def _backward(padding, residuals, g):
    x, kernel = residuals
    _, vjp_x = jax.vjp(lambda x_: _conv(x_, kernel, padding), x)
    dx = vjp_x(g)[0]
    dk = jax.lax.platform_dependent(
        x, kernel, g,
        cuda=lambda x_, k_, g_: swapped_kernel_grad(x_, g_, padding).astype(k_.dtype),
        default=lambda x_, k_, g_: autodiff_kernel_grad(x_, k_, g_, padding))
    return dx, dk


ohwi_conv.defvjp(_forward, _backward)
