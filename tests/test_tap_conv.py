"""atjax.kernels.tap_conv: the one-channel 'same' convolution as taps, against lax.conv and
float64, and the kernel choice (model.kernels) that puts it at the start of the ResNet."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from atjax import config as config_lib
from atjax import frontend, kernels, model as model_lib
from atjax.encoders import panns
from atjax.kernels.tap_conv import reference_conv, tap_conv


def _conv64(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The same-padded cross-correlation in float64 numpy: [B,H,W,1] x [kh,kw,1,C]."""
    kh, kw = kernel.shape[:2]
    b, h, w, _ = x.shape
    padded = np.pad(x[..., 0], ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i:i + h, j:j + w, None] * kernel[i, j, 0]
    return out


@pytest.mark.parametrize("size,block", [((3, 3), 4096), ((3, 5), 4096), ((1, 1), 4096),
                                        ((3, 3), 50), ((3, 5), 77)])
def test_float32_matches_lax_conv_values_and_gradients(size, block, monkeypatch):
    # block: pixels per block of the kernel gradient's matmul; 231 pixels in blocks of 50
    # or 77 take the padded and the exact split.
    monkeypatch.setattr("atjax.kernels.tap_conv._BLOCK_PIXELS", block)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 11, 7, 1)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=size + (1, 5)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(3, 11, 7, 5)), jnp.float32)
    with jax.default_matmul_precision("highest"):
        want, pull_want = jax.vjp(lambda a, k: reference_conv(a, k, jnp.float32), x, kernel)
        got, pull_got = jax.vjp(lambda a, k: tap_conv(a, k, jnp.float32), x, kernel)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got), _conv64(np.asarray(x, np.float64),
                                                            np.asarray(kernel, np.float64)),
                                   rtol=1e-5, atol=1e-5)
        for g, w in zip(pull_got(cot), pull_want(cot)):
            assert g.dtype == w.dtype == jnp.float32 and g.shape == w.shape
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-4)


def test_bfloat16_rounds_inputs_and_sums_in_float32():
    # Inputs rounded to bfloat16, products summed exactly enough: the float64 result of the
    # rounded inputs, rounded once to bfloat16. The input gradient (float32 input) likewise.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 1)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(2, 9, 8, 4)), jnp.bfloat16)
    rounded = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)  # noqa: E731
    out, pull = jax.vjp(lambda a, k: tap_conv(a, k, jnp.bfloat16), x, kernel)
    assert out.dtype == jnp.bfloat16
    want = _conv64(rounded(x), rounded(kernel))
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=2 ** -8, atol=1e-6)
    dx, dkernel = pull(cot)
    assert dx.dtype == dkernel.dtype == jnp.float32
    # d/dx of sum(cot * conv(x, k)) is the correlation of cot with the flipped kernel.
    k64 = rounded(kernel)
    flipped = k64[::-1, ::-1].transpose(0, 1, 3, 2)  # [kh, kw, C, 1]
    cot64 = np.asarray(cot, np.float64)
    want_dx = sum(_conv64(cot64[..., c:c + 1], flipped[:, :, c:c + 1, :])
                  for c in range(cot64.shape[-1]))
    np.testing.assert_allclose(np.asarray(dx, np.float64), want_dx, rtol=1e-5, atol=1e-5)
    # d/dk[i, j, 0, c] = sum over pixels of the rounded input shifted by (i, j) times cot,
    # summed in float32 (the convolution's transpose would round the result to bfloat16).
    x64 = np.pad(rounded(x)[..., 0], ((0, 0), (1, 1), (1, 1)))
    want_dk = np.stack([np.stack([np.einsum("brs,brsc->c", x64[:, i:i + 9, j:j + 8], cot64)
                                  for j in range(3)]) for i in range(3)])[:, :, None, :]
    np.testing.assert_allclose(np.asarray(dkernel, np.float64), want_dk, rtol=1e-5, atol=1e-5)
    conv_dk = jax.vjp(lambda k: reference_conv(x, k, jnp.bfloat16), kernel)[1](cot)[0]
    np.testing.assert_allclose(np.asarray(conv_dk, np.float64), want_dk, rtol=2 ** -7, atol=1e-2)
    assert np.abs(np.asarray(dkernel) - want_dk).max() < np.abs(np.asarray(conv_dk) - want_dk).max()


def test_refuses_inputs_it_does_not_compute():
    x = jnp.zeros((1, 5, 5, 1))
    with pytest.raises(ValueError, match="one-channel"):
        tap_conv(jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 4)), jnp.float32)
    with pytest.raises(ValueError, match="odd kh and kw"):
        tap_conv(x, jnp.zeros((2, 3, 1, 4)), jnp.float32)
    with pytest.raises(ValueError, match="one input channel"):
        panns.ConvBlock(3, 4, dtype=jnp.float32, rngs=nnx.Rngs(0), taps=True)


def test_cuda_lowering_has_no_convolution():
    # What the GPU would run: no convolution in either pass. The forward output is stored
    # in bfloat16 behind a barrier; the backward pass is two matmuls, the kernel gradient's
    # batched over blocks of 4,096 pixels (101 x 64 x 2 = 12,928 pixels: 4 blocks, padded).
    x = jax.ShapeDtypeStruct((2, 101, 64, 1), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((3, 3, 1, 64), jnp.float32)

    def loss(a, kernel):
        return jnp.sum(tap_conv(a, kernel, jnp.bfloat16).astype(jnp.float32) ** 2)

    forward = jax.export.export(jax.jit(loss), platforms=["cuda"])(x, k).mlir_module()
    both = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1))),
                             platforms=["cuda"])(x, k).mlir_module()
    assert "stablehlo.convolution" not in forward + both
    assert "stablehlo.optimization_barrier" in forward
    assert re.search(r"optimization_barrier %\w+ : tensor<2x101x64x64xbf16>", forward)
    dots = [line for line in both.splitlines() if "stablehlo.dot_general" in line]
    assert len(dots) == 2, dots
    assert any("batching_dims = [0] x [0]" in d and "tensor<4x4096x9xbf16>" in d
               and "tensor<4x4096x64xbf16>" in d and "-> tensor<4x9x64xf32>" in d for d in dots)


def _tiny_resnet(stem_conv: str, dtype) -> panns.ResNet:
    config = panns.ResNetConfig(
        blocks=(1, 1), widths=(8, 16), stem_width=8, embed_dim=32, num_classes=5,
        frontend=frontend.FrontendConfig(sample_rate=16000, n_fft=512, hop_length=160,
                                         n_mels=32, fmax=8000.0))
    chosen = kernels.choose("reference", {"tap_conv": stem_conv == "taps"})
    return panns.ResNet(config, dtype=dtype, kernels=chosen, rngs=nnx.Rngs(0))


def test_resnet_with_tap_stem_is_the_same_network():
    conv, taps = _tiny_resnet("conv", jnp.float32), _tiny_resnet("taps", jnp.float32)
    params_conv, params_taps = nnx.state(conv, nnx.Param), nnx.state(taps, nnx.Param)
    assert jax.tree.structure(params_conv) == jax.tree.structure(params_taps)
    for a, b in zip(jax.tree.leaves(params_conv), jax.tree.leaves(params_taps)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wave = jnp.asarray(np.random.default_rng(2).normal(size=(4, 16000)) * 0.1, jnp.float32)

    def loss_and_grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            m = nnx.merge(graphdef, p, rest)
            m.eval()  # no dropout or SpecAugment draws: the two runs see the same network
            return jnp.sum(m(wave)["embedding"] ** 2)

        with jax.default_matmul_precision("highest"):
            return jax.value_and_grad(loss)(params)

    (loss_conv, grads_conv), (loss_taps, grads_taps) = (loss_and_grads(conv),
                                                        loss_and_grads(taps))
    np.testing.assert_allclose(float(loss_taps), float(loss_conv), rtol=1e-5)
    stem_grad = grads_taps["conv_block1"]["conv1"]["kernel"].get_value()
    assert float(jnp.abs(stem_grad).max()) > 0  # the stem is trained through the taps
    for a, b in zip(jax.tree.leaves(grads_conv), jax.tree.leaves(grads_taps)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_kernel_setting_reaches_the_stem_and_older_configs_map_to_it():
    config = model_lib.default_config()
    config.text.encoder = "bert-base"

    def stem_taps(config):
        model = nnx.eval_shape(lambda: model_lib.DualEncoder(config, rngs=nnx.Rngs(0)))
        return model.audio_encoder.conv_block1.taps

    assert model_lib.kernels(config).tap_conv is False and not stem_taps(config)
    config.kernels = "fast"
    assert model_lib.kernels(config).tap_conv is True and stem_taps(config)
    config.kernel_overrides.tap_conv = False
    assert not stem_taps(config)
    # A config written before model.kernels: its stem_conv maps to the op.
    older = model_lib.default_config().to_dict()
    del older["kernels"], older["kernel_overrides"]
    older["audio"]["stem_conv"] = "taps"
    older = ml_collections.ConfigDict(older)
    assert model_lib.kernels(older).tap_conv is True
    older.audio.stem_conv = "conv"
    assert model_lib.kernels(older).tap_conv is False
    # The other GPU kernels were always on then: the older run computes as it did.
    assert model_lib.kernels(older).layer_norm and model_lib.kernels(older).ohwi_conv
    # Both at once: the error names the new setting.
    both = model_lib.default_config()
    both.audio.stem_conv = "taps"
    with pytest.raises(config_lib.ConfigError, match="model.kernel_overrides.tap_conv"):
        model_lib.kernels(both)
