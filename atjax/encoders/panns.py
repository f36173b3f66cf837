"""PANNs checkpoints for the ResNet family of atjax.encoders.resnet, and their converter.

`from_checkpoint` reads a PANNs PyTorch `.pth` (torch needed, imported lazily) or an
orbax directory written by `save` / the converter. Every reader is strict: a checkpoint
that does not fit the model raises atjax.checkpoint.CheckpointMismatchError naming every
offending key.

`python -m atjax.encoders.panns convert IN.pth OUT_DIR` writes a PANNs .pth as an orbax
checkpoint directory (state/ and config.json) that loads without torch. The architecture is
read from the checkpoint's keys unless --arch names it; the frontend flags --sample-rate,
--hop-length, ... default to PANNs' 32 kHz settings.

The model's names (ResNet, ResNetConfig, resnet38, ...) are re-exported from
atjax.encoders.resnet so that `panns.X` reaches them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from atjax import checkpoint as ckpt_lib
from atjax import console
from atjax import frontend as frontend_lib
from atjax.encoders import resnet
from atjax.encoders.resnet import (  # noqa: F401  (re-exported: the model, as panns.X)
    ARCHITECTURES, BasicBlock, BatchNorm, BottleneckBlock, Conv, ConvBlock, ResNet,
    ResNetConfig, Shortcut, num_parameters, resnet22, resnet38, resnet54)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- PANNs layout
#
# The PyTorch state dict names every tensor by module path; conv weights are (out, in, kh,
# kw) where `Conv` wants (out, kh, kw, in), and linear weights (out, in) for Flax's (in, out).


def _conv_to_flax(w: np.ndarray) -> np.ndarray:
    return w.transpose(0, 2, 3, 1)


def _linear_to_flax(w: np.ndarray) -> np.ndarray:
    return w.T


def _as_is(w: np.ndarray) -> np.ndarray:
    return w


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one PANNs tensor goes: a variable (None: checked and dropped) and the transform."""

    variable: nnx.Variable | None
    shape: tuple[int, ...]  # its shape in the PyTorch layout
    to_flax: Callable[[np.ndarray], np.ndarray] = _as_is


def _torch_shape(variable: nnx.Variable, to_flax) -> tuple[int, ...]:
    shape = variable.get_value().shape
    if to_flax is _conv_to_flax:
        return (shape[0], shape[3], shape[1], shape[2])
    if to_flax is _linear_to_flax:
        return shape[::-1]
    return tuple(shape)


def _panns_layout(model: resnet.ResNet) -> dict[str, _Slot]:
    """The PANNs state-dict key of every model tensor, in checkpoint order."""
    slots: dict[str, _Slot] = {}

    def put(key, variable, to_flax=_as_is):
        slots[key] = _Slot(variable, _torch_shape(variable, to_flax), to_flax)

    def conv(prefix, layer: resnet.Conv):
        put(f"{prefix}.weight", layer.kernel, _conv_to_flax)

    def norm(prefix, layer: resnet.BatchNorm):
        put(f"{prefix}.weight", layer.scale)
        put(f"{prefix}.bias", layer.bias)
        put(f"{prefix}.running_mean", layer.mean)
        put(f"{prefix}.running_var", layer.var)
        # PyTorch's step counter; unused with a fixed momentum, but part of the layout.
        slots[f"{prefix}.num_batches_tracked"] = _Slot(None, ())

    def linear(prefix, layer: nnx.Linear):
        put(f"{prefix}.weight", layer.kernel, _linear_to_flax)
        put(f"{prefix}.bias", layer.bias)

    fe = model.config.frontend
    # The frontend's constants travel in the checkpoint as frozen parameters; they are
    # compared with ours (see _check_frontend) rather than loaded.
    slots["spectrogram_extractor.stft.conv_real.weight"] = _Slot(None, (fe.num_bins, 1, fe.n_fft))
    slots["spectrogram_extractor.stft.conv_imag.weight"] = _Slot(None, (fe.num_bins, 1, fe.n_fft))
    slots["logmel_extractor.melW"] = _Slot(None, (fe.num_bins, fe.n_mels))
    norm("bn0", model.bn0)
    for name in ("conv_block1", "conv_block_after1"):
        block = getattr(model, name)
        conv(f"{name}.conv1", block.conv1)
        conv(f"{name}.conv2", block.conv2)
        norm(f"{name}.bn1", block.bn1)
        norm(f"{name}.bn2", block.bn2)
    for s, stage in enumerate(model.stages):
        for i, block in enumerate(stage):
            prefix = f"resnet.layer{s + 1}.{i}"
            depth = 3 if isinstance(block, resnet.BottleneckBlock) else 2
            for j in range(1, depth + 1):
                conv(f"{prefix}.conv{j}", getattr(block, f"conv{j}"))
                norm(f"{prefix}.bn{j}", getattr(block, f"bn{j}"))
            if block.shortcut is not None:
                # nn.Sequential([AvgPool2d,] conv1x1, BatchNorm2d): the pool takes index 0.
                first = 1 if block.shortcut.pool else 0
                conv(f"{prefix}.downsample.{first}", block.shortcut.conv)
                norm(f"{prefix}.downsample.{first + 1}", block.shortcut.bn)
    linear("fc1", model.fc1)
    linear("fc_audioset", model.fc_audioset)
    return slots


def _frontend_constants(config: frontend_lib.FrontendConfig) -> dict[str, np.ndarray]:
    """torchlibrosa's frozen frontend tensors for `config`: the windowed DFT as conv kernels."""
    n = np.arange(config.n_fft)
    k = np.arange(config.num_bins)
    angle = 2.0 * np.pi * np.outer(k, n) / config.n_fft
    window = frontend_lib.hann_window(config.n_fft).astype(np.float64)
    return {
        "spectrogram_extractor.stft.conv_real.weight": (np.cos(angle) * window)[:, None, :],
        "spectrogram_extractor.stft.conv_imag.weight": (-np.sin(angle) * window)[:, None, :],
        "logmel_extractor.melW": frontend_lib.mel_filterbank(config),
    }


def load_state_dict(model: resnet.ResNet, state_dict: Mapping[str, Any], *,
                    source: str = "state dict") -> None:
    """Copies a PANNs PyTorch state dict (numpy arrays or tensors) into `model`, strictly.

    Every key of PANNs' layout must be present with its shape and no other key may be:
    otherwise a CheckpointMismatchError (atjax.checkpoint) lists all missing, unexpected
    and misshaped keys.
    The frozen frontend tensors must equal the ones `model.config.frontend` implies.
    """
    slots = _panns_layout(model)
    shapes = {key: np.shape(value) for key, value in state_dict.items()}
    hint = ("keys start with 'module.': a DataParallel state dict; strip the prefix"
            if shapes and all(key.startswith("module.") for key in shapes) else "")
    error = ckpt_lib.mismatch(source, "the model", shapes,
                              {key: slot.shape for key, slot in slots.items()}, hint=hint,
                              limit=None)
    if error:
        raise error
    arrays = {key: np.asarray(value) for key, value in state_dict.items()}
    _check_frontend(model.config.frontend, arrays, source)
    for key, slot in slots.items():
        if slot.variable is not None:
            slot.variable.set_value(jnp.asarray(slot.to_flax(arrays[key].astype(np.float32))))


def _check_frontend(config, arrays: Mapping[str, np.ndarray], source: str) -> None:
    # A checkpoint trained on other features (sample rate, fmin/fmax, n_fft) would load
    # without complaint and embed garbage; its frozen frontend tensors give it away.
    wrong = []
    for key, want in _frontend_constants(config).items():
        error = float(np.max(np.abs(arrays[key].astype(np.float64) - want)))
        if error > 1e-4 * float(np.max(np.abs(want))):
            wrong.append(f"{key} (max difference {error:.3g})")
    if wrong:
        raise ckpt_lib.CheckpointMismatchError(
            f"{source} was trained with another frontend than {config}: " + ", ".join(wrong))


def _numpy_pickle_globals() -> list:
    # What pickled numpy arrays and scalars need (PANNs' training checkpoints carry the
    # sampler's numpy state next to "model"); these rebuild data and run no other code.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    dtype_classes = [type(np.dtype(t)) for t in set(np.sctypeDict.values())]
    return [reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def read_pth(path) -> dict[str, np.ndarray]:
    """The state dict of a PANNs `.pth` (under "model", or a bare state dict) as numpy arrays."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"reading the PyTorch checkpoint {path} needs torch (pip install torch); or "
            "convert it once where torch is installed (python -m atjax.encoders.panns "
            "convert IN.pth OUT_DIR) and load OUT_DIR") from error
    try:
        with torch.serialization.safe_globals(_numpy_pickle_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint: {error}") from error
    if isinstance(obj, Mapping) and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path} holds no PANNs state dict (a dict of tensors under 'model'); "
                         f"found {keys}")
    return {key: value.detach().cpu().numpy() for key, value in obj.items()}


# ----------------------------------------------------------------------------- orbax


def _flat_state(model: resnet.ResNet) -> dict[str, nnx.Variable]:
    """Parameters and BatchNorm statistics by dotted path ("stages.0.1.conv1.kernel")."""
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {".".join(str(part) for part in path): variable
            for path, variable in nnx.to_flat_state(state)}


def unfilled_model(config: resnet.ResNetConfig, dtype) -> resnet.ResNet:
    """A ResNet whose parameters and statistics are shapes only, to be filled by a loader.

    Skips the random initialisation of weights that are overwritten anyway (seconds for
    ResNet38 on a CPU); the random streams get concrete keys, tagged `dropout` and
    `augment` so that `nnx.reseed` reaches them.
    """
    model = nnx.eval_shape(
        lambda: resnet.ResNet(config, dtype=dtype, rngs=nnx.Rngs(params=0, dropout=0, augment=0)))
    nnx.reseed(model, dropout=0, augment=0)
    return model


def save(model: resnet.ResNet, directory) -> pathlib.Path:
    """Writes `model`'s parameters and BatchNorm statistics (orbax) and its config (JSON).

    Layout: DIRECTORY/config.json, DIRECTORY/state/ (orbax). The directory must be new or
    empty. Random-stream state is not saved: a loaded model is reseeded from scratch.
    """
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {key: np.asarray(variable.get_value()) for key, variable in _flat_state(model).items()}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "state", arrays)
    checkpointer.wait_until_finished()
    (directory / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    return directory


def load(directory, config: resnet.ResNetConfig | None = None, *,
         dtype=jnp.float32) -> resnet.ResNet:
    """Reads a directory written by `save` (or the converter); returns the model in eval mode.

    `config` defaults to the saved config.json; a given one must fit the saved tensors.
    """
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    config_path, state_path = directory / "config.json", directory / "state"
    if not config_path.is_file() or not state_path.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a ResNet checkpoint directory (needs config.json and state/)")
    try:
        saved = resnet.ResNetConfig.from_dict(json.loads(config_path.read_text()))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{config_path}: {error}") from error
    if config is None:
        config = saved
    else:
        _check_same_function(config, saved, str(config_path))
    model = unfilled_model(config, dtype)
    variables = _flat_state(model)
    restored = ocp.StandardCheckpointer().restore(state_path)
    wanted = {key: tuple(v.get_value().shape) for key, v in variables.items()}
    error = ckpt_lib.mismatch(str(state_path), "the model of the config",
                              {key: np.shape(value) for key, value in restored.items()}, wanted,
                              limit=None)
    if error:
        raise error
    for key, variable in variables.items():
        variable.set_value(jnp.asarray(np.asarray(restored[key]), jnp.float32))
    model.eval()
    return model


# What a saved model computes; the other ResNetConfig fields (augmentation, dropout rates)
# are training choices a run may change.
_ARCHITECTURE_FIELDS = ("blocks", "widths", "block", "stem_width", "embed_dim", "num_classes",
                        "frontend")


def _check_same_function(config: resnet.ResNetConfig, saved: resnet.ResNetConfig,
                         source: str) -> None:
    # The frontend has no weights of its own in a saved model, so another sample rate, hop
    # or mel range would load without a shape error and feed the network other features
    # than it was trained on (the .pth path compares its frozen STFT and mel tensors).
    differ = [f"{name} {getattr(config, name)!r} vs {getattr(saved, name)!r}"
              for name in _ARCHITECTURE_FIELDS if getattr(config, name) != getattr(saved, name)]
    if differ:
        raise ckpt_lib.CheckpointMismatchError(
            f"the given config does not describe the model saved in {source} (given vs "
            f"saved): {'; '.join(differ)}")


def infer_config(state_dict: Mapping[str, Any],
                 frontend: frontend_lib.FrontendConfig | None = None) -> resnet.ResNetConfig | None:
    """The family member a PANNs state dict was saved from, or None if its keys don't say.

    Stages, blocks, block type and widths come from the key names and shapes; the frontend
    cannot be read from weights (beyond n_fft and n_mels) and is `frontend`'s, which the
    loader then checks against the checkpoint's mel matrix.
    """
    frontend = frontend or frontend_lib.FrontendConfig()

    def shape(key):
        return tuple(np.shape(state_dict[key]))

    try:
        blocks, widths = [], []
        while f"resnet.layer{len(blocks) + 1}.0.conv1.weight" in state_dict:
            stage = len(blocks) + 1
            count = 0
            while f"resnet.layer{stage}.{count}.conv1.weight" in state_dict:
                count += 1
            blocks.append(count)
            widths.append(shape(f"resnet.layer{stage}.0.conv1.weight")[0])
        return resnet.ResNetConfig(
            blocks=tuple(blocks), widths=tuple(widths),
            block="bottleneck" if "resnet.layer1.0.conv3.weight" in state_dict else "basic",
            stem_width=shape("conv_block1.conv1.weight")[0],
            embed_dim=shape("fc1.weight")[0],
            num_classes=shape("fc_audioset.weight")[0],
            frontend=dataclasses.replace(
                frontend, n_fft=shape("spectrogram_extractor.stft.conv_real.weight")[-1],
                n_mels=shape("logmel_extractor.melW")[1]))
    except (KeyError, IndexError, ValueError):
        return None


def from_checkpoint(path, config: resnet.ResNetConfig | None = None, *,
                    dtype=jnp.float32) -> resnet.ResNet:
    """A ResNet holding pretrained weights, in inference mode (`.eval()`).

    path: a PANNs `.pth` or an orbax directory written by `save` / `python -m
    atjax.encoders.panns convert`. `config` defaults to the architecture read from the
    `.pth` keys (`infer_config`, PANNs' 32 kHz frontend; ResNet38 where the keys are too
    broken to tell, so that the loader's error lists them) or to the directory's
    config.json.
    For fine-tuning call `.train()` and rekey with `nnx.reseed(model, dropout=.., augment=..)`.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        return load(path, config, dtype=dtype)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state_dict = read_pth(path)
    model = unfilled_model(config or infer_config(state_dict) or resnet.resnet38(), dtype)
    load_state_dict(model, state_dict, source=str(path))
    model.eval()
    return model


# ----------------------------------------------------------------------------- converter


def _convert(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    fields = {field.name: getattr(args, field.name)
              for field in dataclasses.fields(frontend_lib.FrontendConfig)}
    log.info("reading %s", args.input)
    state_dict = read_pth(args.input)
    if args.arch == "auto":
        config = infer_config(state_dict, frontend_lib.FrontendConfig(**fields))
        if config is None:
            raise ValueError(f"{args.input}: cannot tell the architecture from its keys; "
                             f"name it with --arch")
    else:
        config = ARCHITECTURES[args.arch](frontend=frontend_lib.FrontendConfig(**fields))
    model = unfilled_model(config, jnp.float32)
    load_state_dict(model, state_dict, source=str(args.input))
    log.info("loaded blocks=%s (%s) widths=%s: %d parameters, %.1f s", config.blocks,
             config.block, config.widths, num_parameters(model),
             time.perf_counter() - start)
    out = save(model, args.output)
    log.info("wrote %s (state/ and config.json), %.1f s in all", out,
             time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m atjax.encoders.panns",
                                     description="PANNs ResNet checkpoint tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="convert a PANNs .pth into an orbax checkpoint directory")
    convert.add_argument("input", help="PANNs checkpoint, e.g. ResNet38_mAP=0.434.pth")
    convert.add_argument("output", help="new directory for state/ (orbax) and config.json")
    convert.add_argument("--arch", choices=["auto", *sorted(ARCHITECTURES)],
                         default="auto",
                         help="family member (default: read from the checkpoint's keys)")
    for field in dataclasses.fields(frontend_lib.FrontendConfig):
        convert.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                             default=field.default,
                             help=f"frontend setting (default {field.default})")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    console.setup(args.verbose)
    try:
        _convert(args)
    except (OSError, ValueError, ImportError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
