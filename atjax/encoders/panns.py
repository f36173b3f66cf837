"""The PANNs ResNet family (ResNet22, ResNet38, ResNet54) in Flax NNX, and PANNs checkpoint import.

One configurable network covers the family: the members differ only in blocks per stage
and block type (basic blocks for ResNet22 [2,2,2,2] and ResNet38 [3,4,6,3], bottleneck
blocks for ResNet54 [3,4,6,3]). Shrunken members (few, narrow stages) are the same class.

    waveform [B, N] -> log-mel [B, T, mels] (float32, atjax.frontend) -> bn0 over mel bins
    -> SpecAugment (training) -> conv_block1 + 2x2 avg-pool -> residual stages (stride 1,
    then 2) -> 2x2 avg-pool -> conv_block_after1 -> mean over mels -> max + mean over time
    -> fc1 + ReLU = "embedding" -> fc_audioset + sigmoid = "clipwise_output"

Layout is NHWC with H = time frames, W = mel bins, C = channels. Time and mel bins are
both halved len(blocks) + 1 times (32x for four stages), with floor at each step as in
PyTorch's avg_pool2d: a clip needs at least 2**(stages+1) frames (ResNet38 at 32 kHz /
hop 320: 9,920 samples, 0.31 s; 1 s chunks give 101 frames -> 3 after pooling) and
n_mels needs at least 2**(stages+1) bins; both are checked with a clear error.

Dropout sites and rates follow PANNs (0.2 after conv_block1, after the last pool and after
conv_block_after1; 0.1 inside each residual block; 0.5 before fc1 and on the embedding;
as in PANNs, clipwise_output is computed from the embedding before its dropout).
`model.train()` / `model.eval()` switch dropout, SpecAugment and BatchNorm's use of running
statistics. Dropout draws from the `dropout` rng stream, SpecAugment from `augment`;
`nnx.reseed(model, dropout=k1, augment=k2)` rekeys them.

BatchNorm follows PyTorch exactly (eps 1e-5, running averages with momentum 0.1 and the
unbiased batch variance), with statistics kept in float32 whatever the compute dtype.
Synchronised BatchNorm: under `jax.jit` with a batch-sharded input, training-mode
statistics are means over the *global* batch (XLA inserts the cross-device reductions),
whereas PANNs' DataParallel computed them per GPU. We keep the global statistics: they do
not depend on the device count, so a run means the same thing on 1 or 64 chips.

Parameters are float32; `dtype` (float32 or bfloat16) is the compute dtype of the
convolutions and dense layers. The frontend and bn0 always run in float32, BatchNorm
statistics are accumulated in float32, and the returned arrays are float32. On recent
NVIDIA GPUs XLA runs float32 convolutions in TF32 unless told otherwise (4e-4 relative
error on the ResNet38 embedding, measured on an H200); for PyTorch-exact float32 numbers
there, wrap the call in `jax.default_matmul_precision("highest")` (1e-6).

Checkpoints: `from_checkpoint` reads a PANNs `.pth` (torch needed, imported lazily) or an
orbax directory written by `save` / the converter:

    python -m atjax.encoders.panns convert ResNet38_mAP=0.434.pth OUT_DIR

(the architecture is read from the checkpoint's keys unless --arch names it; the frontend
flags --sample-rate, --hop-length, ... default to PANNs' 32 kHz settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atjax import dropout as dropout_lib
from atjax import frontend as frontend_lib
from atjax import ohwi_conv as ohwi_conv_lib
from atjax import tap_conv as tap_conv_lib

logger = logging.getLogger(__name__)

_BLOCK_TYPES = ("basic", "bottleneck")
_EXPANSION = {"basic": 1, "bottleneck": 4}
_STEM_CONVS = ("conv", "taps")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A member of the PANNs ResNet family. The defaults are ResNet38."""

    blocks: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    block: str = "basic"  # "basic" (ResNet22/38) or "bottleneck" (ResNet54: 1x1-3x3-1x1, x4 wide)
    stem_width: int = 64
    embed_dim: int = 2048
    num_classes: int = 527
    frontend: frontend_lib.FrontendConfig = dataclasses.field(
        default_factory=frontend_lib.FrontendConfig)
    spec_augment: bool = True
    feature_dropout: float = 0.2  # after conv_block1, the last avg-pool and conv_block_after1
    block_dropout: float = 0.1  # inside every residual block
    pooled_dropout: float = 0.5  # on the pooled features, before fc1
    embedding_dropout: float = 0.5  # on the returned embedding
    # BatchNorm statistics in one read of the activations (True) or two (False); None:
    # one for bfloat16 compute, two for float32 (see BatchNorm). bn0 always takes two.
    batchnorm_one_pass: bool | None = None
    # How the first convolution (one channel in, stem_width out, at full resolution) runs:
    # "conv" as a convolution (cuDNN on GPUs), "taps" as atjax.tap_conv. Same function.
    stem_conv: str = "conv"

    def __post_init__(self):
        # Lists from JSON or ml_collections become tuples so that configs stay hashable.
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "widths", tuple(self.widths))
        if isinstance(self.frontend, Mapping):
            object.__setattr__(self, "frontend", frontend_lib.FrontendConfig(**self.frontend))
        if not self.blocks or len(self.blocks) != len(self.widths):
            raise ValueError(
                "ResNetConfig needs one width per stage: "
                f"blocks={self.blocks}, widths={self.widths}"
            )
        counts = {
            "blocks": self.blocks, "widths": self.widths, "stem_width": (self.stem_width,),
            "embed_dim": (self.embed_dim,), "num_classes": (self.num_classes,),
        }
        for name, values in counts.items():
            if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"ResNetConfig.{name} must be positive integers, got {values}")
        if self.batchnorm_one_pass not in (None, True, False):
            raise ValueError("ResNetConfig.batchnorm_one_pass must be None (automatic), True "
                             f"or False, got {self.batchnorm_one_pass!r}")
        if self.stem_conv not in _STEM_CONVS:
            raise ValueError(f"ResNetConfig.stem_conv must be one of {_STEM_CONVS}, got "
                             f"{self.stem_conv!r}")
        if self.block not in _BLOCK_TYPES:
            raise ValueError(
                f"ResNetConfig.block must be one of {_BLOCK_TYPES}, got {self.block!r}")
        for name in ("feature_dropout", "block_dropout", "pooled_dropout", "embedding_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"ResNetConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.frontend.n_mels < self.downsampling:
            raise ValueError(
                f"ResNetConfig with {len(self.blocks)} stages halves the mel axis "
                f"{len(self.blocks) + 1} times, so it needs n_mels >= {self.downsampling}; "
                f"got {self.frontend.n_mels}"
            )

    @property
    def downsampling(self) -> int:
        """How many times smaller time and mel axes get: conv_block1, stages 2.., final pool."""
        return 2 ** (len(self.blocks) + 1)

    @property
    def context_frames(self) -> int:
        """Input frames on either side of the `downsampling` frames that one time step of
        `ResNet.frame_features` pools which can still change it: the reach of the 3x3
        convolutions (one position each, at their level's scale). Beyond it, a step sees
        none of the input."""
        per_block = {"basic": 2, "bottleneck": 1}[self.block]
        reach = 2  # conv_block1, at the frame rate
        for index, count in enumerate(self.blocks):
            reach += count * per_block * 2 ** (index + 1)
        return reach + 2 * self.downsampling  # conv_block_after1

    @property
    def min_samples(self) -> int:
        """The shortest waveform that leaves one frame after all poolings."""
        return (self.downsampling - 1) * self.frontend.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ResNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ResNetConfig fields: {unknown}")
        return cls(**values)


def resnet22(**overrides) -> ResNetConfig:
    """PANNs ResNet22: basic blocks [2, 2, 2, 2]."""
    return ResNetConfig(**{"blocks": (2, 2, 2, 2), **overrides})


def resnet38(**overrides) -> ResNetConfig:
    """PANNs ResNet38: basic blocks [3, 4, 6, 3] (the paper's audio encoder)."""
    return ResNetConfig(**overrides)


def resnet54(**overrides) -> ResNetConfig:
    """PANNs ResNet54: bottleneck blocks [3, 4, 6, 3]."""
    return ResNetConfig(**{"blocks": (3, 4, 6, 3), "block": "bottleneck", **overrides})


_ARCHITECTURES = {"resnet22": resnet22, "resnet38": resnet38, "resnet54": resnet54}

# ----------------------------------------------------------------------------- layers

_xavier = nnx.initializers.xavier_uniform()  # PANNs' init for every conv and linear layer


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with PyTorch's semantics and float32 statistics.

    Unlike `nnx.BatchNorm`, the running variance is updated with the unbiased batch
    variance (n / (n - 1)), as PyTorch does, so fine-tuning a PANNs checkpoint keeps the
    statistics it was trained with. `momentum` is Flax's (decay of the running average):
    0.9 is PyTorch's momentum 0.1.

    Training-mode statistics take two passes over the activations in float32 compute
    (PyTorch's accuracy, for checkpoint parity) and one pass, shifted by the running mean,
    in reduced-precision compute (`one_pass`), where BatchNorm's reads of the large early
    activations are a visible part of the step.
    """

    def __init__(self, num_features: int, *, dtype=jnp.float32, scale_init: float = 1.0,
                 epsilon: float = 1e-5, momentum: float = 0.9, use_running_average: bool = False,
                 one_pass: bool | None = None):
        self.scale = nnx.Param(jnp.full((num_features,), scale_init, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.dtype = dtype
        self.epsilon = epsilon
        self.momentum = momentum
        self.use_running_average = use_running_average
        # None: one pass for reduced-precision compute, two passes for float32.
        self.one_pass = (jnp.dtype(dtype) != jnp.float32) if one_pass is None else one_pass

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = self.mean.get_value(), self.var.get_value()
        else:
            axes = tuple(range(x.ndim - 1))
            if self.one_pass:
                # Mean and variance from one read of the activations (XLA fuses the two
                # sums), about the shifted values x - K with K the running mean: once K
                # tracks the batch mean, E[(x-K)^2] - (E[x]-K)^2 does not cancel the way
                # the plain E[x^2] - E[x]^2 does; its gradient is the exact one. Used for
                # bfloat16 compute, whose activations carry 4e-3 relative rounding anyway.
                shift = jax.lax.stop_gradient(self.mean.get_value())
                centred = x32 - shift
                mean_centred = jnp.mean(centred, axes)
                var = jnp.maximum(
                    jnp.mean(jnp.square(centred), axes) - jnp.square(mean_centred), 0.0)
                mean = mean_centred + shift
            else:
                # Two passes, as accurate as PyTorch's Welford (float32 parity). The plain
                # one-pass E[x^2] - E[x]^2 cancels badly where few values are normalised
                # (deep layers of short clips): 6e-4 relative error on a test embedding,
                # against 9e-6 with this.
                mean = jnp.mean(x32, axes)
                var = jnp.mean(jnp.square(x32 - mean), axes)
            count = x.size // x.shape[-1]
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            self.mean.set_value(m * self.mean.get_value() + (1 - m) * jax.lax.stop_gradient(mean))
            self.var.set_value(m * self.var.get_value() + (1 - m) * jax.lax.stop_gradient(unbiased))
        # Fold the normalisation into one per-channel multiply-add.
        multiplier = self.scale.get_value() * jax.lax.rsqrt(var + self.epsilon)
        offset = self.bias.get_value() - mean * multiplier
        return (x32 * multiplier + offset).astype(self.dtype)


class Conv(nnx.Module):
    """A square, stride-1, "same"-padded convolution without bias, its kernel stored OHWI.

    `kernel` is [out, kh, kw, in], the layout in which XLA:GPU hands NHWC convolutions to
    cuDNN and in which cuDNN returns the kernel gradient. Stored as nnx.Conv's HWIO, every
    kernel was transposed on its way into each convolution and its gradient on its way
    back, and the optimizer's kernels for the transposed gradients could not update the
    donated parameter and moment buffers in place, so XLA wrote them elsewhere and copied
    them back: on an H200 (b42f9cd profile) 0.6 ms of transposing Adam kernels at 0.9 TB/s
    and 0.5 ms of copies a step. The initial values are nnx.Conv's (the same key, drawn in
    HWIO and transposed), and so are the outputs.
    """

    def __init__(self, in_features: int, out_features: int, size: int, *, dtype,
                 rngs: nnx.Rngs, ohwi_kernel_grad: bool = False):
        hwio = _xavier(rngs.params(), (size, size, in_features, out_features), jnp.float32)
        self.kernel = nnx.Param(jnp.transpose(hwio, (3, 0, 1, 2)))
        self.dtype = dtype
        self.padding = size // 2
        # The kernel gradient by atjax.ohwi_conv (for tiny images, where XLA:GPU returns it
        # transposed): the same function and gradient.
        self.ohwi_kernel_grad = ohwi_kernel_grad

    def __call__(self, x: jax.Array) -> jax.Array:
        x, kernel = nnx.nn.dtypes.promote_dtype((x, self.kernel.get_value()), dtype=self.dtype)
        if self.ohwi_kernel_grad:
            return ohwi_conv_lib.ohwi_conv(x, kernel, self.padding)
        pad = [(self.padding, self.padding)] * 2
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), pad,
                                            dimension_numbers=("NHWC", "OHWI", "NHWC"))

    def hwio_kernel(self) -> jax.Array:
        """The kernel as [kh, kw, in, out] (nnx.Conv's and atjax.tap_conv's layout)."""
        return jnp.transpose(self.kernel.get_value(), (1, 2, 3, 0))


# Parameters saved before the kernels became OHWI (2026-11-26) hold nnx.Conv's HWIO
# kernels: trainer checkpoints, export bundles and `save` directories. Their readers
# restore them through these two, so that no run or model is lost to the change.


def _is_conv_kernel(path, x) -> bool:
    """A 4-D leaf named "kernel" (a tree's conv kernel, or Adam's moments of one); a flat
    dict's key "stages.0.1.conv1.kernel" counts too."""
    if not path or len(getattr(x, "shape", ())) != 4:
        return False
    last = path[-1]
    key = getattr(last, "key", getattr(last, "name", last))
    return isinstance(key, str) and key.split(".")[-1] == "kernel"


def hwio_kernel_shapes(tree):
    """`tree` of shapes with each conv kernel's as it was saved before the change."""
    def old(path, x):
        if not _is_conv_kernel(path, x):
            return x
        o, h, w, i = x.shape
        return jax.ShapeDtypeStruct((h, w, i, o), x.dtype, sharding=getattr(x, "sharding", None))
    return jax.tree_util.tree_map_with_path(old, tree)


def kernels_from_hwio(tree):
    """`tree` restored from such a save, each conv kernel transposed to OHWI."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.transpose(x, (3, 0, 1, 2)) if _is_conv_kernel(path, x) else x, tree)


def _conv(in_features: int, out_features: int, size: int, dtype, rngs: nnx.Rngs,
          ohwi_kernel_grad: bool = False) -> Conv:
    return Conv(in_features, out_features, size, dtype=dtype, rngs=rngs,
                ohwi_kernel_grad=ohwi_kernel_grad)


def _avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pooling of NHWC, dropping an odd last row/column like torch's avg_pool2d."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ConvBlock(nnx.Module):
    """Two 3x3 conv -> BatchNorm -> ReLU layers, optionally followed by a 2x2 avg-pool.
    `taps`: the first convolution (one input channel) by atjax.tap_conv, same parameters.
    `ohwi_kernel_grad`: both kernels' gradients by atjax.ohwi_conv (see `Conv`)."""

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs,
                 taps: bool = False, ohwi_kernel_grad: bool = False):
        if taps and in_features != 1:
            raise ValueError(f"a tap convolution needs one input channel, not {in_features}")
        self.conv1 = _conv(in_features, out_features, 3, dtype, rngs, ohwi_kernel_grad)
        self.bn1 = BatchNorm(out_features, dtype=dtype)
        self.conv2 = _conv(out_features, out_features, 3, dtype, rngs, ohwi_kernel_grad)
        self.bn2 = BatchNorm(out_features, dtype=dtype)
        self.taps = taps

    def __call__(self, x: jax.Array, *, pool: bool) -> jax.Array:
        if self.taps:
            x = tap_conv_lib.tap_conv(x, self.conv1.hwio_kernel(), self.conv1.dtype)
        else:
            x = self.conv1(x)
        x = nnx.relu(self.bn1(x))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return _avg_pool_2x2(x) if pool else x


class Shortcut(nnx.Module):
    """Projection shortcut of a stage's first block: [2x2 avg-pool] -> 1x1 conv -> BatchNorm."""

    def __init__(self, in_features: int, out_features: int, *, pool: bool, dtype,
                 rngs: nnx.Rngs):
        self.pool = pool
        self.conv = _conv(in_features, out_features, 1, dtype, rngs)
        self.bn = BatchNorm(out_features, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(_avg_pool_2x2(x) if self.pool else x))


class BasicBlock(nnx.Module):
    """[2x2 avg-pool if strided] -> conv3x3-BN-ReLU-dropout -> conv3x3-BN, + shortcut, ReLU."""

    def __init__(self, in_features: int, width: int, *, stride: int, dropout: float, dtype,
                 rngs: nnx.Rngs):
        self.pool = stride == 2  # PANNs downsamples by average pooling, not strided convs
        self.conv1 = _conv(in_features, width, 3, dtype, rngs)
        self.bn1 = BatchNorm(width, dtype=dtype)
        self.dropout = dropout_lib.Dropout(dropout, rngs=rngs)
        self.conv2 = _conv(width, width, 3, dtype, rngs)
        # Zero-initialised last scale: a fresh block starts as the identity (PANNs' init).
        self.bn2 = BatchNorm(width, dtype=dtype, scale_init=0.0)
        self.shortcut = _shortcut(in_features, width, stride, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = _avg_pool_2x2(x) if self.pool else x
        out = self.dropout(nnx.relu(self.bn1(self.conv1(out))))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(out + identity)


class BottleneckBlock(nnx.Module):
    """[2x2 avg-pool if strided] -> 1x1-BN-ReLU -> 3x3-BN-ReLU-dropout -> 1x1 (4x width)-BN,
    + shortcut, ReLU."""

    def __init__(self, in_features: int, width: int, *, stride: int, dropout: float, dtype,
                 rngs: nnx.Rngs):
        out_features = width * _EXPANSION["bottleneck"]
        self.pool = stride == 2
        self.conv1 = _conv(in_features, width, 1, dtype, rngs)
        self.bn1 = BatchNorm(width, dtype=dtype)
        self.conv2 = _conv(width, width, 3, dtype, rngs)
        self.bn2 = BatchNorm(width, dtype=dtype)
        self.dropout = dropout_lib.Dropout(dropout, rngs=rngs)
        self.conv3 = _conv(width, out_features, 1, dtype, rngs)
        self.bn3 = BatchNorm(out_features, dtype=dtype, scale_init=0.0)
        self.shortcut = _shortcut(in_features, out_features, stride, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = _avg_pool_2x2(x) if self.pool else x
        out = nnx.relu(self.bn1(self.conv1(out)))
        out = self.dropout(nnx.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(out + identity)


def _shortcut(in_features, out_features, stride, dtype, rngs) -> Shortcut | None:
    if stride == 1 and in_features == out_features:
        return None
    return Shortcut(in_features, out_features, pool=stride == 2, dtype=dtype, rngs=rngs)


_BLOCK_CLASSES = {"basic": BasicBlock, "bottleneck": BottleneckBlock}

# ----------------------------------------------------------------------------- network


class ResNet(nnx.Module):
    """A PANNs ResNet on raw waveforms at `config.frontend.sample_rate`. See the module doc."""

    def __init__(self, config: ResNetConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.logmel = frontend_lib.LogMel(config.frontend)
        # PANNs normalises each mel bin (it transposes mels onto the channel axis).
        self.bn0 = BatchNorm(config.frontend.n_mels, dtype=jnp.float32)
        self.spec_augment = frontend_lib.SpecAugment(rngs=rngs) if config.spec_augment else None
        self.conv_block1 = ConvBlock(1, config.stem_width, dtype=dtype, rngs=rngs,
                                     taps=config.stem_conv == "taps")
        self.feature_dropout = dropout_lib.Dropout(config.feature_dropout, rngs=rngs)
        block_class = _BLOCK_CLASSES[config.block]
        stages = []
        features = config.stem_width
        for index, (count, width) in enumerate(zip(config.blocks, config.widths)):
            stage = []
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                stage.append(block_class(features, width, stride=stride,
                                         dropout=config.block_dropout, dtype=dtype, rngs=rngs))
                features = width * _EXPANSION[config.block]
            stages.append(nnx.List(stage))
        self.stages = nnx.List(stages)
        # Runs on the tiny last image (31 x 2 for 10 s clips): see atjax.ohwi_conv.
        self.conv_block_after1 = ConvBlock(features, config.embed_dim, dtype=dtype, rngs=rngs,
                                           ohwi_kernel_grad=True)
        self.pooled_dropout = dropout_lib.Dropout(config.pooled_dropout, rngs=rngs)
        self.fc1 = nnx.Linear(config.embed_dim, config.embed_dim, dtype=dtype,
                              kernel_init=_xavier, rngs=rngs)
        self.embedding_dropout = dropout_lib.Dropout(config.embedding_dropout, rngs=rngs)
        self.fc_audioset = nnx.Linear(config.embed_dim, config.num_classes, dtype=dtype,
                                      kernel_init=_xavier, rngs=rngs)
        if config.batchnorm_one_pass is not None:
            for _, module in self.iter_modules():
                if isinstance(module, BatchNorm) and module is not self.bn0:
                    module.one_pass = config.batchnorm_one_pass

    @property
    def output_dim(self) -> int:
        return self.config.embed_dim

    def __call__(self, waveform: jax.Array, *, chunk_samples: int | None = None
                 ) -> dict[str, jax.Array]:
        """waveform [B, N] float32 at the config's sample rate.

        chunk_samples=None: {"embedding": [B, embed_dim], "clipwise_output": [B, classes]}.
        chunk_samples=C: N must be a multiple of C; the T = N // C consecutive chunks of
        every clip go through the network as one batch of B * T clips, giving
        {"chunk_embeddings": [B, T, embed_dim], "chunk_clipwise_output": [B, T, classes]}.
        In training mode BatchNorm then sees statistics over all B * T chunks.
        """
        if waveform.ndim != 2:
            raise ValueError(
                f"ResNet expects waveforms [batch, samples], got shape {waveform.shape}")
        if chunk_samples is None:
            return self._clips(waveform)
        batch, samples = waveform.shape
        if chunk_samples <= 0 or samples % chunk_samples:
            raise ValueError(
                f"chunked mode needs the waveform length to be a positive multiple of "
                f"chunk_samples={chunk_samples}, got {samples} samples")
        chunks = samples // chunk_samples
        x = self._features(waveform.reshape(batch * chunks, chunk_samples))
        if self.spec_augment is not None:
            # Stripes are drawn over each clip's frames, chunks side by side, not per chunk:
            # per 1 s chunk PANNs' stripes (up to 63 of ~101 frames) would zero about half
            # of every clip instead of the ~6% the MLP head's whole clips lose, and the
            # comparison of the heads would measure the augmentation.
            frames, mels = x.shape[1:]
            with jax.named_scope("spec_augment"):
                x = self.spec_augment(x.reshape(batch, chunks * frames, mels))
            x = x.reshape(batch * chunks, frames, mels)
        out = self._network(x)
        return {
            "chunk_embeddings": out["embedding"].reshape(batch, chunks, -1),
            "chunk_clipwise_output": out["clipwise_output"].reshape(batch, chunks, -1),
        }

    def _clips(self, waveform: jax.Array) -> dict[str, jax.Array]:
        x = self._features(waveform)
        if self.spec_augment is not None:
            with jax.named_scope("spec_augment"):
                x = self.spec_augment(x)
        return self._network(x)

    def _features(self, waveform: jax.Array) -> jax.Array:
        """[B, N] waveforms -> [B, T, mels] normalised log-mel features, float32."""
        samples = waveform.shape[-1]
        if samples < self.config.min_samples:
            raise ValueError(
                f"a {samples}-sample clip is too short: the ResNet pools time "
                f"{self.config.downsampling}x, which needs at least "
                f"{self.config.min_samples} samples "
                f"({self.config.min_samples / self.config.frontend.sample_rate:.3f} s)")
        # The named scopes label the compiled ops by network part for profiles
        # (python -m atjax.bench profile); they cost nothing at run time.
        with jax.named_scope("frontend"):
            return self.bn0(self.logmel(waveform))

    def frame_features(self, waveform: jax.Array) -> jax.Array:
        """[B, N] waveforms -> [B, T', embed_dim]: the features of each time step (of
        `downsampling` frames) before the global max + mean pooling of `pool_frames`;
        `pool_frames(frame_features(w))` is `self(w)`. A long clip's steps can be computed
        in overlapping windows (each step depends on `config.context_frames` frames around
        its own)."""
        x = self._features(waveform)
        if self.spec_augment is not None:
            with jax.named_scope("spec_augment"):
                x = self.spec_augment(x)
        return self._frame_features(x)

    def _network(self, x: jax.Array) -> dict[str, jax.Array]:
        """[B, T, mels] features -> the clip embedding and AudioSet outputs."""
        return self.pool_frames(self._frame_features(x))

    def _frame_features(self, x: jax.Array) -> jax.Array:
        """[B, T, mels] features -> [B, T', embed_dim] float32, mels averaged."""
        with jax.named_scope("conv_block1"):
            x = x[..., None].astype(self.dtype)  # NHWC with one channel
            x = self.feature_dropout(self.conv_block1(x, pool=True))
        for index, stage in enumerate(self.stages):
            with jax.named_scope(f"stage{index + 1}"):
                for block in stage:
                    x = block(x)
        with jax.named_scope("conv_block_after1"):
            x = self.feature_dropout(_avg_pool_2x2(x))
            x = self.feature_dropout(self.conv_block_after1(x, pool=False))
        with jax.named_scope("pool_fc"):
            # Global pooling in float32: a mean over mels, then (pool_frames) max + mean over time.
            return jnp.mean(x.astype(jnp.float32), axis=2)

    def pool_frames(self, frames: jax.Array) -> dict[str, jax.Array]:
        """[B, T', embed_dim] `frame_features` -> the clip embedding and AudioSet outputs."""
        with jax.named_scope("pool_fc"):
            x = jnp.max(frames, axis=1) + jnp.mean(frames, axis=1)
            x = self.pooled_dropout(x.astype(self.dtype))
            x = nnx.relu(self.fc1(x))
            clipwise = nnx.sigmoid(self.fc_audioset(x))
            embedding = self.embedding_dropout(x)
        return {"embedding": embedding.astype(jnp.float32),
                "clipwise_output": clipwise.astype(jnp.float32)}


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


def _panns_layout(model: ResNet) -> dict[str, _Slot]:
    """The PANNs state-dict key of every model tensor, in checkpoint order."""
    slots: dict[str, _Slot] = {}

    def put(key, variable, to_flax=_as_is):
        slots[key] = _Slot(variable, _torch_shape(variable, to_flax), to_flax)

    def conv(prefix, layer: Conv):
        put(f"{prefix}.weight", layer.kernel, _conv_to_flax)

    def norm(prefix, layer: BatchNorm):
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
            depth = 3 if isinstance(block, BottleneckBlock) else 2
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


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model; the message names every offender."""


def _mismatch_message(source: str, missing, extra, misshaped) -> str:
    lines = [f"{source} does not fit the model:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
    if extra:
        lines.append(f"  unexpected ({len(extra)}): " + ", ".join(extra))
    if misshaped:
        lines.append(f"  wrong shape ({len(misshaped)}): " + ", ".join(
            f"{key} {got} (model wants {want})" for key, got, want in misshaped))
    if extra and all(key.startswith("module.") for key in extra):
        lines.append("  (keys start with 'module.': a DataParallel state dict; strip the prefix)")
    return "\n".join(lines)


def _compare_keys(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, np.ndarray],
                  source: str) -> None:
    missing = [key for key in expected if key not in given]
    extra = sorted(key for key in given if key not in expected)
    misshaped = [(key, tuple(np.shape(given[key])), shape) for key, shape in expected.items()
                 if key in given and tuple(np.shape(given[key])) != tuple(shape)]
    if missing or extra or misshaped:
        raise CheckpointMismatchError(_mismatch_message(source, missing, extra, misshaped))


def load_state_dict(model: ResNet, state_dict: Mapping[str, Any], *,
                    source: str = "state dict") -> None:
    """Copies a PANNs PyTorch state dict (numpy arrays or tensors) into `model`, strictly.

    Every key of PANNs' layout must be present with its shape and no other key may be:
    otherwise a CheckpointMismatchError lists all missing, unexpected and misshaped keys.
    The frozen frontend tensors must equal the ones `model.config.frontend` implies.
    """
    slots = _panns_layout(model)
    _compare_keys({key: slot.shape for key, slot in slots.items()}, state_dict, source)
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
        raise CheckpointMismatchError(
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


def _flat_state(model: ResNet) -> dict[str, nnx.Variable]:
    """Parameters and BatchNorm statistics by dotted path ("stages.0.1.conv1.kernel")."""
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {".".join(str(part) for part in path): variable
            for path, variable in nnx.to_flat_state(state)}


def _unfilled_model(config: ResNetConfig, dtype) -> ResNet:
    """A ResNet whose parameters and statistics are shapes only, to be filled by a loader.

    Skips the random initialisation of weights that are overwritten anyway (seconds for
    ResNet38 on a CPU); the random streams get concrete keys, tagged `dropout` and
    `augment` so that `nnx.reseed` reaches them.
    """
    model = nnx.eval_shape(
        lambda: ResNet(config, dtype=dtype, rngs=nnx.Rngs(params=0, dropout=0, augment=0)))
    nnx.reseed(model, dropout=0, augment=0)
    return model


def save(model: ResNet, directory) -> pathlib.Path:
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


def load(directory, config: ResNetConfig | None = None, *, dtype=jnp.float32) -> ResNet:
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
        saved = ResNetConfig.from_dict(json.loads(config_path.read_text()))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{config_path}: {error}") from error
    if config is None:
        config = saved
    else:
        _check_same_function(config, saved, str(config_path))
    model = _unfilled_model(config, dtype)
    variables = _flat_state(model)
    restored = ocp.StandardCheckpointer().restore(state_path)
    wanted = {key: tuple(v.get_value().shape) for key, v in variables.items()}

    def misfits(tree) -> int:
        return sum(np.shape(tree.get(key)) != shape for key, shape in wanted.items())

    if misfits(restored):
        older = kernels_from_hwio(restored)  # saved before the kernels became OHWI?
        if misfits(older) < misfits(restored):  # then any error names only the rest
            logging.warning("%s holds HWIO conv kernels (saved before 2026-11-26); "
                            "transposed them to OHWI", state_path)
            restored = older
    _compare_keys(wanted, restored, str(state_path))
    for key, variable in variables.items():
        variable.set_value(jnp.asarray(np.asarray(restored[key]), jnp.float32))
    model.eval()
    return model


# What a saved model computes; the other ResNetConfig fields (augmentation, dropout rates,
# how BatchNorm and the stem are computed) are training choices a run may change.
_ARCHITECTURE_FIELDS = ("blocks", "widths", "block", "stem_width", "embed_dim", "num_classes",
                        "frontend")


def _check_same_function(config: ResNetConfig, saved: ResNetConfig, source: str) -> None:
    # The frontend has no weights of its own in a saved model, so another sample rate, hop
    # or mel range would load without a shape error and feed the network other features
    # than it was trained on (the .pth path compares its frozen STFT and mel tensors).
    differ = [f"{name} {getattr(config, name)!r} vs {getattr(saved, name)!r}"
              for name in _ARCHITECTURE_FIELDS if getattr(config, name) != getattr(saved, name)]
    if differ:
        raise CheckpointMismatchError(
            f"the given config does not describe the model saved in {source} (given vs "
            f"saved): {'; '.join(differ)}")


def infer_config(state_dict: Mapping[str, Any],
                 frontend: frontend_lib.FrontendConfig | None = None) -> ResNetConfig | None:
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
        return ResNetConfig(
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


def from_checkpoint(path, config: ResNetConfig | None = None, *, dtype=jnp.float32) -> ResNet:
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
    model = _unfilled_model(config or infer_config(state_dict) or resnet38(), dtype)
    load_state_dict(model, state_dict, source=str(path))
    model.eval()
    return model


def num_parameters(model: ResNet) -> int:
    """Trainable parameters (BatchNorm statistics and frontend constants excluded)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------- CLI


def _convert(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    fields = {field.name: getattr(args, field.name)
              for field in dataclasses.fields(frontend_lib.FrontendConfig)}
    logger.info("reading %s", args.input)
    state_dict = read_pth(args.input)
    if args.arch == "auto":
        config = infer_config(state_dict, frontend_lib.FrontendConfig(**fields))
        if config is None:
            raise ValueError(f"{args.input}: cannot tell the architecture from its keys; "
                             f"name it with --arch")
    else:
        config = _ARCHITECTURES[args.arch](frontend=frontend_lib.FrontendConfig(**fields))
    model = _unfilled_model(config, jnp.float32)
    load_state_dict(model, state_dict, source=str(args.input))
    logger.info("loaded blocks=%s (%s) widths=%s: %d parameters, %.1f s", config.blocks,
                config.block, config.widths, num_parameters(model), time.perf_counter() - start)
    out = save(model, args.output)
    logger.info("wrote %s (state/ and config.json), %.1f s in all", out,
                time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m atjax.encoders.panns",
                                     description="PANNs ResNet checkpoint tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="convert a PANNs .pth into an orbax checkpoint directory")
    convert.add_argument("input", help="PANNs checkpoint, e.g. ResNet38_mAP=0.434.pth")
    convert.add_argument("output", help="new directory for state/ (orbax) and config.json")
    convert.add_argument("--arch", choices=["auto", *sorted(_ARCHITECTURES)], default="auto",
                         help="family member (default: read from the checkpoint's keys)")
    for field in dataclasses.fields(frontend_lib.FrontendConfig):
        convert.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                             default=field.default,
                             help=f"frontend setting (default {field.default})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        _convert(args)
    except (OSError, ValueError, ImportError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
