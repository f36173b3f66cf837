"""atjax.kernels.ohwi_conv: the convolution whose kernel gradient is taken in the kernel's OHWI
layout on CUDA GPUs, against autodiff of lax.conv and float64 numpy, and its place in the
PANNs ResNet (conv_block_after1)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atjax import frontend, kernels
from atjax.encoders import panns
from atjax.kernels.ohwi_conv import autodiff_kernel_grad, ohwi_conv, swapped_kernel_grad


def _kernel_grad64(x: np.ndarray, g: np.ndarray, size: int) -> np.ndarray:
    """d sum(g * conv(x, k)) / dk[o, i, j, c] in float64: the 'same' cross-correlation's
    kernel gradient, sum over b, h, w of g[b, h, w, o] * x_padded[b, h + i, w + j, c]."""
    p = size // 2
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros((g.shape[-1], size, size, x.shape[-1]))
    for i in range(size):
        for j in range(size):
            out[:, i, j] = np.einsum("bhwo,bhwc->oc", g, padded[:, i:i + h, j:j + w])
    return out


@pytest.mark.parametrize("shape,cout,size", [((2, 7, 2, 6), 5, 3), ((3, 5, 4, 4), 4, 3),
                                             ((2, 9, 3, 3), 7, 5), ((2, 4, 4, 3), 2, 1)])
def test_swapped_kernel_gradient_is_the_kernel_gradient(shape, cout, size):
    # Rectangular and square images, more or fewer outputs than inputs, 1x1 to 5x5: the
    # swapped convolution (the GPU's form) against autodiff and a float64 computation.
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    g = rng.normal(size=shape[:3] + (cout,))
    kernel = jnp.asarray(rng.normal(size=(cout, size, size, shape[3])), jnp.float32)
    want = _kernel_grad64(x, g, size)
    with jax.default_matmul_precision("highest"):
        got = swapped_kernel_grad(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32),
                                  size // 2)
        auto = autodiff_kernel_grad(jnp.asarray(x, jnp.float32), kernel,
                                    jnp.asarray(g, jnp.float32), size // 2)
    assert got.shape == auto.shape == kernel.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(auto), want, rtol=1e-5, atol=1e-5)


def test_bfloat16_kernel_gradient_within_rounding():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 31, 2, 16)), jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(4, 31, 2, 24)), jnp.bfloat16)
    got = swapped_kernel_grad(x, g, 1)
    assert got.dtype == jnp.bfloat16
    want = _kernel_grad64(np.asarray(x, np.float64), np.asarray(g, np.float64), 3)
    # Sums of 248 products rounded once to bfloat16 (8 bits): within 2^-8 of the largest.
    np.testing.assert_allclose(np.asarray(got, np.float64), want,
                               atol=np.abs(want).max() * 2.0 ** -7)


def test_values_and_gradients_are_lax_conv_bit_for_bit_here():
    # Off CUDA the backward pass is autodiff's: the same bits as plain lax.conv.
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 6, 2, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(12, 3, 3, 8)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(3, 6, 2, 12)), jnp.float32)

    def plain(a, k):
        return jax.lax.conv_general_dilated(a, k, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "OHWI", "NHWC"))

    want, pull_want = jax.vjp(plain, x, kernel)
    got, pull_got = jax.vjp(lambda a, k: ohwi_conv(a, k, 1), x, kernel)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for a, b in zip(pull_got(cot), pull_want(cot)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cuda_lowering_takes_the_swapped_convolution():
    # What a GPU would run for the 2048-channel convolution of conv_block_after1 (a
    # smaller batch): the kernel gradient is a convolution whose batch is the output
    # gradient's channels and whose result is [out, kh, kw, in], the kernel's shape, so
    # nothing transposes a kernel-sized array; off CUDA, autodiff's own.
    x = jax.ShapeDtypeStruct((4, 31, 2, 64), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((96, 3, 3, 64), jnp.bfloat16)

    def loss(a, kernel):
        return jnp.sum(ohwi_conv(a, kernel, 1).astype(jnp.float32) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    cuda = jax.export.export(grad, platforms=["cuda"])(x, k).mlir_module()
    cpu = jax.export.export(grad, platforms=["cpu"])(x, k).mlir_module()
    convs = [line for line in cuda.splitlines() if "stablehlo.convolution" in line]
    # forward, input gradient, kernel gradient
    assert len(convs) == 3, convs
    # Autodiff's kernel gradient has the image channels as its batch ([f, 0, 1, b] out);
    # the swapped one, the output gradient's channels.
    swapped = "[f, 0, 1, b]x[i, 0, 1, o]->[b, 0, 1, f]"
    autodiff = "x[i, 0, 1, o]->[f, 0, 1, b]"
    assert [swapped in c for c in convs].count(True) == 1, convs
    assert all(autodiff not in c for c in convs), convs
    assert any(swapped in c and "-> tensor<96x3x3x64xbf16>" in c for c in convs), convs
    assert "stablehlo.reverse" in cuda
    assert not re.search(r"stablehlo.transpose .*tensor<\d+x3x3x\d+x", cuda)
    assert swapped not in cpu and autodiff in cpu


def test_refuses_what_it_does_not_compute():
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="kernel \\[out, kh, kw, in\\]"):
        ohwi_conv(x, jnp.zeros((2, 3, 3, 4)), 1)
    with pytest.raises(ValueError, match="'same' convolutions"):
        ohwi_conv(x, jnp.zeros((2, 3, 3, 3)), 0)


def _tiny_resnet(ohwi: bool) -> panns.ResNet:
    config = panns.ResNetConfig(
        blocks=(1, 1), widths=(8, 16), stem_width=8, embed_dim=32, num_classes=5,
        frontend=frontend.FrontendConfig(sample_rate=16000, n_fft=512, hop_length=160,
                                         n_mels=32, fmax=8000.0))
    chosen = kernels.choose("reference", {"ohwi_conv": ohwi})
    return panns.ResNet(config, dtype=jnp.float32, kernels=chosen, rngs=nnx.Rngs(0))


def test_resnet_uses_it_for_conv_block_after1_only_and_trains_the_same():
    model = _tiny_resnet(True)
    flags = {path: m.ohwi_kernel_grad for path, m in nnx.iter_graph(model)
             if isinstance(m, panns.Conv)}
    chosen = sorted(".".join(map(str, p)) for p, on in flags.items() if on)
    assert chosen == ["conv_block_after1.conv1", "conv_block_after1.conv2"], chosen
    assert not any(m.ohwi_kernel_grad for _, m in nnx.iter_graph(_tiny_resnet(False))
                   if isinstance(m, panns.Conv))
    wave = jnp.asarray(np.random.default_rng(3).normal(size=(3, 16000)) * 0.1, jnp.float32)

    def grads(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)

        def loss(p):
            net = nnx.merge(graphdef, p, rest)
            net.eval()
            return jnp.sum(net(wave)["embedding"] ** 2)

        return jax.jit(jax.grad(loss))(params)

    with_it = grads(model)
    without = grads(_tiny_resnet(False))
    kernel = with_it["conv_block_after1"]["conv2"]["kernel"].get_value()
    assert float(jnp.abs(kernel).max()) > 0
    for a, b in zip(jax.tree.leaves(with_it), jax.tree.leaves(without)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
