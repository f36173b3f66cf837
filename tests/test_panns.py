"""The PANNs ResNet family against a PyTorch reference, checkpoint import, modes and errors."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from atjax import checkpoint as ckpt_lib
from atjax import frontend
from atjax import kernels
from atjax.encoders import panns
from atjax.encoders import resnet

torch = pytest.importorskip("torch")
pytest.importorskip("torchlibrosa")
import panns_reference as reference  # noqa: E402  (after the importorskips; tests/ is on sys.path)

REPO = pathlib.Path(__file__).resolve().parents[1]

# Small members of the family: basic blocks with a stride-1 projection in stage 1 (stem
# width != first stage width), and bottleneck blocks (ResNet54's kind).
SMALL = panns.ResNetConfig(blocks=(2, 1, 1, 1), widths=(12, 16, 24, 32), stem_width=8,
                           embed_dim=48, num_classes=7)
SMALL_BOTTLENECK = panns.resnet54(blocks=(1, 2, 1, 1), widths=(4, 8, 8, 16), stem_width=8,
                                  embed_dim=48, num_classes=7)


@nnx.jit
def _forward(model, waveform):
    return model(waveform)


def _numpy(tree):
    return jax.tree.map(np.asarray, tree)


def _relative_error(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _torch_model(config: panns.ResNetConfig, seed=0, **dropouts):
    fe = config.frontend
    model = reference.TorchResNet(
        config.blocks, config.widths, config.block, config.stem_width, config.embed_dim,
        config.num_classes, fe.sample_rate, fe.n_fft, fe.hop_length, fe.n_mels, fe.fmin,
        fe.fmax, **dropouts)
    return reference.randomize(model, seed).eval()


def _clips(batch, samples, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 32000
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 4000, (batch, 1)) * t)
    return (tone + 0.05 * rng.standard_normal((batch, samples))).astype(np.float32)


def _loaded(config, torch_model, dtype=jnp.float32):
    # Built abstractly and filled: eager random initialisation of a fresh ResNet costs tens
    # of seconds on a loaded CPU, and the weights are overwritten anyway.
    model = panns.unfilled_model(config, dtype)
    panns.load_state_dict(model, reference.state_dict_numpy(torch_model))
    return model


# ----------------------------------------------------------------------------- ResNet38


@pytest.fixture(scope="module")
def resnet38_checkpoint(tmp_path_factory):
    """A randomised PyTorch ResNet38 saved the way PANNs does, and its outputs on 1 s clips."""
    torch.manual_seed(0)
    model = _torch_model(panns.resnet38())
    path = tmp_path_factory.mktemp("panns") / "ResNet38_random.pth"
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    waveform = _clips(2, 32000)
    trainable = sum(p.numel() for name, p in model.named_parameters()
                    if not name.startswith(("spectrogram_extractor", "logmel_extractor")))
    return path, waveform, reference.run(model, waveform), trainable


def _assert_matches_torch(out, want):
    assert out["embedding"].shape == want["embedding"].shape
    assert _relative_error(out["embedding"], want["embedding"]) < 1e-4
    np.testing.assert_allclose(out["clipwise_output"], want["clipwise_output"], rtol=0, atol=1e-5)


def test_resnet38_from_pth_matches_pytorch(resnet38_checkpoint):
    path, waveform, want, torch_trainable = resnet38_checkpoint
    model = panns.from_checkpoint(path)
    assert panns.num_parameters(model) == torch_trainable == 73_783_247
    assert want["embedding"].shape == (2, 2048) and want["clipwise_output"].shape == (2, 527)
    assert 0.05 < want["clipwise_output"].mean() < 0.95  # not saturated: a real comparison
    _assert_matches_torch(_numpy(_forward(model, waveform)), want)


def _convert(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "atjax.encoders.panns", "convert", *map(str, args)]
    return subprocess.run(command,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_convert_cli(tmp_path, capsys):
    torch_model = _torch_model(SMALL_BOTTLENECK)
    path = tmp_path / "small.pth"
    torch.save({"model": torch_model.state_dict()}, path)
    result = _convert(path, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert panns.ResNetConfig.from_dict(config) == SMALL_BOTTLENECK  # read from the keys
    model = panns.from_checkpoint(tmp_path / "out")
    waveform = _clips(2, 20000)
    _assert_matches_torch(_numpy(_forward(model, waveform)), reference.run(torch_model, waveform))
    # The failures, in-process (a subprocess per case costs seconds of imports).
    for args, message in [
        # Into the same directory again: refused rather than mixing two checkpoints.
        ([path, tmp_path / "out"], "not empty"),
        # Named as another architecture: the mismatches are listed.
        ([path, tmp_path / "wrong", "--arch", "resnet38"], "resnet.layer1.0.conv3.weight"),
        ([path, tmp_path / "wrong", "--arch", "resnet38"],
         "fc1.weight saved (48, 48), model (2048, 2048)"),
        ([tmp_path / "absent.pth", tmp_path / "wrong"], "absent.pth"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            panns.main(["convert", *map(str, args)])
        assert exit_info.value.code == 1 and message in capsys.readouterr().err


@pytest.mark.parametrize("config", [panns.resnet22(), panns.resnet38(), panns.resnet54(), SMALL,
                                    SMALL_BOTTLENECK])
def test_infer_config(config):
    model = nnx.eval_shape(lambda: panns.ResNet(config, rngs=nnx.Rngs(0)))
    shapes_only = {key: np.broadcast_to(np.float32(0), slot.shape)
                   for key, slot in panns._panns_layout(model).items()}
    assert panns.infer_config(shapes_only) == config
    assert panns.infer_config({"fc1.weight": np.zeros((2, 2))}) is None


def test_family_sizes():
    # PANNs' published sizes: ResNet22 63.7M, ResNet38 73.8M, ResNet54 104.3M parameters.
    sizes = {name: panns.num_parameters(nnx.eval_shape(
        lambda f=make: panns.ResNet(f(), rngs=nnx.Rngs(0))))
        for name, make in [("22", panns.resnet22), ("38", panns.resnet38), ("54", panns.resnet54)]}
    assert sizes == {"22": 63_675_087, "38": 73_783_247, "54": 104_318_159}


@pytest.mark.parametrize("config", [panns.resnet22(), panns.resnet38(), panns.resnet54(), SMALL,
                                    SMALL_BOTTLENECK])
def test_panns_layout_is_the_torch_state_dict(config):
    # Every parameter and statistic has exactly one PANNs key, and the keys and shapes are
    # those of the PyTorch model.
    model = nnx.eval_shape(lambda: panns.ResNet(config, rngs=nnx.Rngs(0)))
    layout = panns._panns_layout(model)
    mapped = [id(slot.variable) for slot in layout.values() if slot.variable is not None]
    assert sorted(mapped) == sorted(id(v) for v in panns._flat_state(model).values())
    if config.blocks == SMALL.blocks or config.blocks == SMALL_BOTTLENECK.blocks:
        torch_shapes = {k: tuple(v.shape) for k, v in _torch_model(config).state_dict().items()}
        assert {k: tuple(s.shape) for k, s in layout.items()} == torch_shapes


# ----------------------------------------------------------------------------- small members


@pytest.mark.parametrize("config", [SMALL, SMALL_BOTTLENECK], ids=["basic", "bottleneck"])
def test_small_members_match_pytorch(config):
    torch_model = _torch_model(config)
    waveform = _clips(2, 20000)
    model = _loaded(config, torch_model)
    model.eval()
    _assert_matches_torch(_numpy(_forward(model, waveform)), reference.run(torch_model, waveform))


# The CPU default task's encoder: 16 kHz, hop 160, narrow stages. 1 s is 101 frames, 3
# after the 32x pooling.
CPU_DEFAULT = panns.ResNetConfig(
    blocks=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8, embed_dim=128,
    frontend=frontend.FrontendConfig(sample_rate=16000, n_fft=512, hop_length=160, fmax=8000.0))


def test_chunks_equal_their_pieces():
    model = _loaded(CPU_DEFAULT, _torch_model(CPU_DEFAULT))
    model.eval()
    assert model.output_dim == 128
    # The transformer Agg/Proj's input: consecutive 1 s chunks through the encoder at once.
    waveform = np.random.default_rng(0).standard_normal((2, 3 * 16000)).astype(np.float32)
    chunked = _numpy(nnx.jit(lambda m, x: m(x, chunk_samples=16000))(model, waveform))
    assert chunked["chunk_embeddings"].shape == (2, 3, 128)
    assert chunked["chunk_clipwise_output"].shape == (2, 3, 527)
    pieces = [_numpy(_forward(model, waveform[:, i * 16000 : (i + 1) * 16000])) for i in range(3)]
    assert not np.allclose(pieces[0]["embedding"], pieces[1]["embedding"])
    for i, piece in enumerate(pieces):
        np.testing.assert_allclose(chunked["chunk_embeddings"][:, i], piece["embedding"],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(chunked["chunk_clipwise_output"][:, i],
                                   piece["clipwise_output"], rtol=1e-5, atol=1e-6)


def _shapes(model, waveform, **kwargs):
    """Runs the model abstractly: shape errors without compiling anything."""
    return nnx.eval_shape(lambda m, x: m(x, **kwargs), model, waveform)


def test_length_errors():
    model = nnx.eval_shape(lambda: panns.ResNet(SMALL, rngs=nnx.Rngs(0)))
    assert SMALL.min_samples == 9920  # 31 hops: 32 frames, pooled 32x to one
    assert _shapes(model, jnp.zeros((1, 9920)))["embedding"].shape == (1, 48)
    with pytest.raises(ValueError, match="needs at least 9920 samples"):
        _shapes(model, jnp.zeros((1, 9919)))
    with pytest.raises(ValueError, match="waveforms \\[batch, samples\\]"):
        _shapes(model, jnp.zeros((9920,)))
    waveform = jnp.zeros((2, 96000))
    assert _shapes(model, waveform, chunk_samples=32000)["chunk_embeddings"].shape == (2, 3, 48)
    with pytest.raises(ValueError, match="multiple of chunk_samples=25000"):
        _shapes(model, waveform, chunk_samples=25000)
    with pytest.raises(ValueError, match="at least 9920 samples"):  # 0.25 s chunks: too short
        _shapes(model, waveform, chunk_samples=8000)
    assert CPU_DEFAULT.min_samples == 31 * 160


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("size,cin,cout", [(3, 5, 7), (1, 4, 6), (3, 1, 8)])
def test_conv_is_nnx_conv_with_an_ohwi_kernel(size, cin, cout, dtype):
    # The kernel is stored [out, kh, kw, in] (cuDNN's layout for NHWC); initial values,
    # outputs and gradients are nnx.Conv's, the kernel's gradient in the same layout.
    want = nnx.Conv(cin, cout, (size, size), padding=size // 2, use_bias=False, dtype=dtype,
                    param_dtype=jnp.float32, kernel_init=resnet._xavier, rngs=nnx.Rngs(3))
    got = panns.Conv(cin, cout, size, dtype=dtype, rngs=nnx.Rngs(3))
    hwio = np.asarray(want.kernel.get_value())
    assert got.kernel.get_value().shape == (cout, size, size, cin)
    np.testing.assert_array_equal(np.asarray(got.kernel.get_value()), hwio.transpose(3, 0, 1, 2))
    np.testing.assert_array_equal(np.asarray(got.hwio_kernel()), hwio)
    x = jax.random.normal(jax.random.key(1), (2, 11, 9, cin))
    cot = jax.random.normal(jax.random.key(2), (2, 11, 9, cout))

    def grads(module):
        graphdef, params = nnx.split(module, nnx.Param)

        def f(params, x):
            y = nnx.merge(graphdef, params, copy=True)(x)
            return jnp.sum(y.astype(jnp.float32) * cot), y
        return jax.grad(f, argnums=(0, 1), has_aux=True)(params, x)

    (p_want, x_want), y_want = grads(want)
    (p_got, x_got), y_got = grads(got)
    assert y_got.dtype == y_want.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y_got, np.float32), np.asarray(y_want, np.float32))
    np.testing.assert_allclose(np.asarray(x_got), np.asarray(x_want), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(p_got["kernel"].get_value()),
                               np.asarray(p_want["kernel"].get_value()).transpose(3, 0, 1, 2),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", [SMALL, SMALL_BOTTLENECK], ids=["basic", "bottleneck"])
def test_resnet_convolutions_store_ohwi_kernels(config):
    model = panns.ResNet(config, rngs=nnx.Rngs(0))
    kernels = {key: v.get_value().shape for key, v in panns._flat_state(model).items()
               if key.endswith("kernel") and v.get_value().ndim == 4}
    assert kernels["conv_block1.conv1.kernel"] == (config.stem_width, 3, 3, 1)
    assert all(shape[1] == shape[2] in (1, 3) for shape in kernels.values()), kernels


def test_batchnorm_matches_a_hand_computation():
    bn = panns.BatchNorm(3)
    rng = np.random.default_rng(0)
    bn.scale.set_value(jnp.asarray(rng.uniform(0.5, 1.5, 3), jnp.float32))
    bn.bias.set_value(jnp.asarray(rng.normal(size=3), jnp.float32))
    bn.mean.set_value(jnp.asarray([0.5, -1.0, 2.0], jnp.float32))
    bn.var.set_value(jnp.asarray([1.0, 2.0, 0.5], jnp.float32))
    x = rng.normal(2.0, 3.0, (4, 5, 6, 3))
    scale, bias = np.asarray(bn.scale.get_value()), np.asarray(bn.bias.get_value())
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    y = np.asarray(bn(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * scale + bias, atol=1e-4)
    # PyTorch's update: momentum 0.1 and the unbiased variance (n = 4 * 5 * 6).
    np.testing.assert_allclose(np.asarray(bn.mean.get_value()),
                               0.9 * np.array([0.5, -1, 2]) + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var.get_value()),
                               0.9 * np.array([1, 2, 0.5]) + 0.1 * var * 120 / 119, rtol=1e-5)
    bn.eval()
    running_mean, running_var = np.asarray(bn.mean.get_value()), np.asarray(bn.var.get_value())
    y = np.asarray(bn(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(
        y, (x - running_mean) / np.sqrt(running_var + 1e-5) * scale + bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(bn.mean.get_value()), running_mean)  # no update


def test_one_pass_batchnorm_statistics():
    # Activations far from zero (mean/std = 1000): the plain one-pass variance
    # E[x^2] - E[x]^2 cancels in float32; shifted by a running mean near the batch mean it
    # matches the two-pass statistics, values and gradients alike.
    rng = np.random.default_rng(1)
    x = (1000.0 + rng.standard_normal((512, 4, 8))).astype(np.float32)
    x64 = x.astype(np.float64).reshape(-1, 8)
    want = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)

    def normalised(one_pass, shift):
        bn = panns.BatchNorm(8, one_pass=one_pass)
        bn.mean.set_value(jnp.full((8,), shift, jnp.float32))
        return bn, np.asarray(bn(jnp.asarray(x)), np.float64).reshape(-1, 8)

    _, two_pass = normalised(False, 0.0)
    _, plain = normalised(True, 0.0)
    shifted_bn, shifted = normalised(True, 999.0)
    assert np.abs(two_pass - want).max() < 2e-4
    assert np.abs(plain - want).max() > 1e-2  # the cancellation the shift avoids
    assert np.abs(shifted - want).max() < 2e-4
    # The running statistics get the same update either way.
    two_bn, _ = normalised(False, 999.0)
    for name in ("mean", "var"):
        np.testing.assert_allclose(getattr(shifted_bn, name).get_value(),
                                   getattr(two_bn, name).get_value(), rtol=1e-5)
    # Gradients with respect to the input and the scale.
    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def grads(one_pass):
        bn = panns.BatchNorm(8, one_pass=one_pass)
        bn.mean.set_value(jnp.full((8,), 999.0, jnp.float32))
        graphdef, params, stats = nnx.split(bn, nnx.Param, nnx.BatchStat)

        def f(params, x):
            return jnp.sum(nnx.merge(graphdef, params, stats, copy=True)(x) * cotangent)
        return jax.grad(f, argnums=(0, 1))(params, jnp.asarray(x))

    (p1, x1), (p2, x2) = grads(True), grads(False)
    np.testing.assert_allclose(x1, x2, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(p1["scale"].get_value(), p2["scale"].get_value(), rtol=1e-3, atol=1e-2)


def test_batchnorm_passes_follow_the_kernel_choice_and_compute_dtype():
    fast, reference = kernels.choose("fast"), kernels.choose("reference")
    for dtype, want in ((jnp.float32, False), (jnp.bfloat16, True)):
        model = panns.ResNet(SMALL, dtype=dtype, kernels=fast, rngs=nnx.Rngs(0))
        assert model.conv_block1.bn1.one_pass is want
        assert model.stages[1][0].shortcut.bn.one_pass is want
        assert model.bn0.one_pass is False  # float32 log-mel input
        plain = panns.ResNet(SMALL, dtype=dtype, kernels=reference, rngs=nnx.Rngs(0))
        assert not any(m.one_pass for _, m in plain.iter_modules()
                       if isinstance(m, panns.BatchNorm))
    forced = panns.ResNet(SMALL, dtype=jnp.float32, rngs=nnx.Rngs(0),
                          kernels=kernels.choose("reference", {"batchnorm_one_pass": True}))
    assert forced.conv_block_after1.bn2.one_pass is True and forced.bn0.one_pass is False


def test_training_batchnorm_matches_pytorch():
    # Dropout and SpecAugment off, so training mode is deterministic and comparable.
    config = panns.ResNetConfig(**{**SMALL.to_dict(), "spec_augment": False, "feature_dropout": 0.0,
                                   "block_dropout": 0.0, "pooled_dropout": 0.0,
                                   "embedding_dropout": 0.0})
    torch_model = _torch_model(config, feature_dropout=0.0, block_dropout=0.0,
                               pooled_dropout=0.0, embedding_dropout=0.0)
    model = _loaded(config, torch_model)
    waveform = _clips(2, 20000, seed=5)
    model.eval()
    eval_before = _numpy(_forward(model, waveform))
    torch_model.train()
    model.train()
    want = reference.run(torch_model, waveform)  # updates torch's running statistics
    got = _numpy(_forward(model, waveform))
    assert _relative_error(got["embedding"], want["embedding"]) < 1e-4
    assert _relative_error(got["embedding"], eval_before["embedding"]) > 1e-2  # batch stats differ
    torch_state = reference.state_dict_numpy(torch_model)
    for key, slot in panns._panns_layout(model).items():
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(np.asarray(slot.variable.get_value()), torch_state[key],
                                       rtol=1e-4, atol=1e-5, err_msg=key)
    torch_model.eval()
    model.eval()
    _assert_matches_torch(_numpy(_forward(model, waveform)), reference.run(torch_model, waveform))
    # With SpecAugment and dropout off, training mode does not depend on the random keys.
    model.train()
    nnx.reseed(model, dropout=1, augment=1)
    np.testing.assert_allclose(_numpy(_forward(model, waveform))["embedding"], got["embedding"],
                               rtol=1e-6, atol=1e-7)


def test_dropout_and_spec_augment_only_in_training():
    model = _loaded(SMALL, _torch_model(SMALL))
    waveform = _clips(2, 20000)

    def run(dropout, augment):
        nnx.reseed(model, dropout=dropout, augment=augment)
        return np.asarray(_forward(model, waveform)["embedding"])

    model.train()
    reference_run = run(0, 0)
    np.testing.assert_allclose(run(0, 0), reference_run, rtol=1e-6, atol=1e-7)  # keyed
    assert not np.allclose(run(1, 0), reference_run)  # dropout is live
    assert not np.allclose(run(0, 1), reference_run)  # SpecAugment is live
    model.eval()
    evaluated = run(0, 0)
    np.testing.assert_array_equal(run(1, 1), evaluated)
    # Embedding dropout (0.5) zeroes about half of what the ReLU left.
    assert (reference_run == 0).mean() > (evaluated == 0).mean() + 0.15


def test_chunked_spec_augment_draws_its_stripes_per_clip():
    """With chunks (the Transformer head), SpecAugment's stripes are drawn over each clip's
    frames, chunks side by side: at most two time stripes per clip, and the same mel bins
    dropped in every chunk of a clip, as for the whole clip the MLP head sees."""
    model = panns.ResNet(SMALL, rngs=nnx.Rngs(params=0, dropout=0, augment=0))
    model.train()
    seen = []
    model._network = lambda x: seen.append(np.asarray(x)) or {
        "embedding": jnp.zeros((x.shape[0], SMALL.embed_dim)),
        "clipwise_output": jnp.zeros((x.shape[0], SMALL.num_classes))}
    batch, chunks = 6, 5
    model(jnp.asarray(_clips(batch, chunks * 32000)), chunk_samples=32000)
    features = seen[0].reshape(batch, chunks, *seen[0].shape[1:])  # [B, C, T, mels]
    zero = features == 0
    runs, widths = [], []
    for clip in zero:
        frames = np.concatenate(clip.all(axis=-1))  # a frame of the clip wholly dropped
        edges = np.diff(np.concatenate([[0], frames.astype(int), [0]]))
        runs.append(int((edges == 1).sum()))
        widths.append(int(frames.sum()))
        bins = clip.all(axis=-2)  # [C, mels]: mel bins dropped through a whole chunk
        np.testing.assert_array_equal(bins, np.broadcast_to(bins[:1], bins.shape))
    assert max(runs) <= 2 and max(widths) <= 2 * 63, (runs, widths)
    assert sum(widths) > 0  # stripes were drawn at all


def test_integer_pcm_is_refused():
    model = panns.ResNet(SMALL, rngs=nnx.Rngs(params=0, dropout=0, augment=0))
    model.eval()
    pcm = (_clips(1, 20000) * 32767).astype(np.int16)
    with pytest.raises(TypeError, match="got int16"):
        model(pcm)


def test_bfloat16_stays_close_to_float32():
    torch_model = _torch_model(SMALL)
    waveform = _clips(2, 20000)
    full = _loaded(SMALL, torch_model)
    half = _loaded(SMALL, torch_model, dtype=jnp.bfloat16)
    full.eval()
    half.eval()
    want, got = _numpy(_forward(full, waveform)), _numpy(_forward(half, waveform))
    assert got["embedding"].dtype == np.float32  # outputs are returned in float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(half, nnx.Param)))
    assert half.conv_block1.conv1.dtype == jnp.bfloat16
    # The log-mel and bn0 stay float32 under bfloat16 compute (dB values up to ~100 would
    # lose their fine structure in bfloat16's 8 bits): the same features to the bit.
    features = half._features(jnp.asarray(waveform))
    assert features.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(features),
                                  np.asarray(full._features(jnp.asarray(waveform))))
    error = _relative_error(got["embedding"], want["embedding"])
    assert 0 < error < 1e-2  # computed differently (measured 3.9e-3), and still close
    np.testing.assert_allclose(got["clipwise_output"], want["clipwise_output"], atol=2e-2)


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def small_state():
    return reference.state_dict_numpy(_torch_model(SMALL))


def _fresh():
    return panns.unfilled_model(SMALL, jnp.float32)


def test_bad_state_dicts_name_every_offender(small_state):
    state = dict(small_state)
    del state["fc1.bias"], state["resnet.layer2.0.downsample.2.running_var"]
    state["resnet.layer5.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
    state["head.weight"] = np.zeros(3, np.float32)
    state["conv_block1.conv1.weight"] = np.zeros((8, 1, 5, 5), np.float32)
    state["bn0.weight"] = np.zeros(63, np.float32)
    with pytest.raises(ckpt_lib.CheckpointMismatchError) as error:
        panns.load_state_dict(_fresh(), state)
    message = str(error.value)
    for key in ["fc1.bias", "resnet.layer2.0.downsample.2.running_var",
                "resnet.layer5.0.conv1.weight", "head.weight"]:
        assert key in message
    assert "conv_block1.conv1.weight saved (8, 1, 5, 5), model (8, 1, 3, 3)" in message
    assert "bn0.weight saved (63,), model (64,)" in message
    assert "missing (2)" in message and "unexpected (2)" in message and "wrong shape (2)" in message


def test_prefixed_state_dict_gets_a_hint(small_state):
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="DataParallel"):
        panns.load_state_dict(_fresh(), {f"module.{k}": v for k, v in small_state.items()})


def test_other_frontend_is_rejected(small_state):
    state = dict(small_state)
    other = frontend.FrontendConfig(fmax=8000.0)
    state["logmel_extractor.melW"] = frontend.mel_filterbank(other)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="logmel_extractor.melW"):
        panns.load_state_dict(_fresh(), state)


def test_unreadable_files(tmp_path, small_state):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        panns.from_checkpoint(garbage, SMALL)
    not_a_state_dict = tmp_path / "other.pth"
    torch.save({"weights": [1, 2]}, not_a_state_dict)
    with pytest.raises(ValueError, match="holds no PANNs state dict"):
        panns.from_checkpoint(not_a_state_dict, SMALL)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        panns.from_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="config.json and state"):
        panns.from_checkpoint(tmp_path)  # a directory, but not a checkpoint


def test_panns_training_checkpoint_with_numpy_state(tmp_path, small_state):
    # PANNs' training checkpoints also pickle the sampler's numpy state next to "model".
    path = tmp_path / "100000_iterations.pth"
    weights = {key: torch.from_numpy(value) for key, value in small_state.items()}
    sampler = {"indexes": np.arange(5), "pointer": np.int64(3), "queue": [np.float32(1)]}
    torch.save({"iteration": 100000, "model": weights, "sampler": sampler}, path)
    model = panns.from_checkpoint(path, SMALL)
    np.testing.assert_array_equal(np.asarray(model.fc1.bias.get_value()), small_state["fc1.bias"])
    assert model.bn0.use_running_average and model.fc1.bias.get_value().dtype == jnp.float32


def test_orbax_round_trip(tmp_path, small_state):
    model = _fresh()
    panns.load_state_dict(model, small_state)
    model.eval()
    panns.save(model, tmp_path / "ckpt")
    waveform = _clips(2, 20000)
    want = _numpy(_forward(model, waveform))
    for loaded in (panns.load(tmp_path / "ckpt"), panns.from_checkpoint(tmp_path / "ckpt")):
        assert loaded.config == SMALL and loaded.bn0.use_running_average
        got = _numpy(_forward(loaded, waveform))
        np.testing.assert_array_equal(got["embedding"], want["embedding"])
    with pytest.raises(FileExistsError, match="not empty"):
        panns.save(model, tmp_path / "ckpt")
    # A directory whose tensors do not fit its config is refused, naming them.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    arrays = {key: np.asarray(v.get_value())
              for key, v in panns._flat_state(model).items()}
    arrays["fc1.bias"] = np.zeros(3, np.float32)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((bad / "state").absolute(), arrays)
    checkpointer.wait_until_finished()
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"wrong shape \(1\): fc1.bias saved \(3,\), model \(48,\)$"):
        panns.load(bad)
    wider = panns.ResNetConfig(**{**SMALL.to_dict(), "embed_dim": 64})
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="embed_dim 64 vs"):
        panns.from_checkpoint(tmp_path / "ckpt", wider)


def test_orbax_checkpoint_refuses_another_frontend(tmp_path, small_state):
    """The frontend has no weights in a saved model: a config with another sample rate or
    mel range fits every tensor, so the saved config.json is what must refuse it."""
    model = _fresh()
    panns.load_state_dict(model, small_state)
    panns.save(model, tmp_path / "ckpt")
    for change in ({"sample_rate": 16000, "fmax": 8000.0}, {"fmax": 8000.0}, {"hop_length": 160}):
        other = dataclasses.replace(SMALL, frontend=dataclasses.replace(SMALL.frontend, **change))
        with pytest.raises(ckpt_lib.CheckpointMismatchError, match="frontend FrontendConfig"):
            panns.load(tmp_path / "ckpt", other)
    # Training choices may differ from the saved run's.
    fine_tune = dataclasses.replace(SMALL, spec_augment=False, block_dropout=0.3)
    assert panns.from_checkpoint(tmp_path / "ckpt", fine_tune).config == fine_tune


@pytest.mark.parametrize("fields,match", [
    ({"blocks": (1, 1), "widths": (8,)}, "one width per stage"),
    ({"block": "wide"}, "block must be one of"),
    ({"widths": (8, 16, 0, 64)}, "widths must be positive"),
    ({"block_dropout": 1.0}, "block_dropout"),
    ({"blocks": (1,) * 6, "widths": (8,) * 6}, "n_mels >= 128"),
])
def test_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        panns.ResNetConfig(**fields)


def test_config_dict_round_trip():
    config = panns.resnet54(frontend=frontend.FrontendConfig(sample_rate=16000, hop_length=160,
                                                             fmax=8000.0))
    as_json = json.loads(json.dumps(config.to_dict()))
    assert panns.ResNetConfig.from_dict(as_json) == config
    # Directories saved while the stem and BatchNorm choices were config fields still load:
    # atjax.kernels makes those choices now.
    assert panns.ResNetConfig.from_dict(
        {**as_json, "stem_conv": "taps", "batchnorm_one_pass": None}) == config
    with pytest.raises(ValueError, match="unknown ResNetConfig fields: \\['depth'\\]"):
        panns.ResNetConfig.from_dict({**as_json, "depth": 54})
