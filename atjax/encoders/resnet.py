"""The PANNs ResNet family (ResNet22, ResNet38, ResNet54) in Flax NNX.

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
NVIDIA GPUs XLA runs float32 convolutions in TF32 unless told otherwise; for PyTorch-exact
float32 numbers there, wrap the call in `jax.default_matmul_precision("highest")`.

This module is the model only; pretrained weights come through atjax.encoders.panns
(`from_checkpoint` reads a PANNs `.pth` or a converted directory; `python -m
atjax.encoders.panns convert IN.pth OUT_DIR` converts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from atjax import frontend as frontend_lib
from atjax import kernels as kernels_lib
from atjax.kernels import dropout as dropout_lib
from atjax.kernels import ohwi_conv as ohwi_conv_lib
from atjax.kernels import tap_conv as tap_conv_lib

_BLOCK_TYPES = ("basic", "bottleneck")
_EXPANSION = {"basic": 1, "bottleneck": 4}
# How BatchNorm and the stem were computed, once fields of the config and written to
# saved config.json files; now chosen by atjax.kernels, and ignored when read.
_FORMER_FIELDS = ("batchnorm_one_pass", "stem_conv")


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
        unknown = sorted(set(values) - known - set(_FORMER_FIELDS))
        if unknown:
            raise ValueError(f"unknown ResNetConfig fields: {unknown}")
        return cls(**{k: v for k, v in values.items() if k in known})


def resnet22(**overrides) -> ResNetConfig:
    """PANNs ResNet22: basic blocks [2, 2, 2, 2]."""
    return ResNetConfig(**{"blocks": (2, 2, 2, 2), **overrides})


def resnet38(**overrides) -> ResNetConfig:
    """PANNs ResNet38: basic blocks [3, 4, 6, 3] (the paper's audio encoder)."""
    return ResNetConfig(**overrides)


def resnet54(**overrides) -> ResNetConfig:
    """PANNs ResNet54: bottleneck blocks [3, 4, 6, 3]."""
    return ResNetConfig(**{"blocks": (3, 4, 6, 3), "block": "bottleneck", **overrides})


ARCHITECTURES = {"resnet22": resnet22, "resnet38": resnet38, "resnet54": resnet54}

# ----------------------------------------------------------------------------- layers

_xavier = nnx.initializers.xavier_uniform()  # PANNs' init for every conv and linear layer


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with PyTorch's semantics and float32 statistics.

    Unlike `nnx.BatchNorm`, the running variance is updated with the unbiased batch
    variance (n / (n - 1)), as PyTorch does, so fine-tuning a PANNs checkpoint keeps the
    statistics it was trained with. `momentum` is Flax's (decay of the running average):
    0.9 is PyTorch's momentum 0.1.

    Training-mode statistics take two passes over the activations (PyTorch's accuracy, for
    checkpoint parity) or, with `one_pass`, one pass shifted by the running mean (fewer
    reads of the large early activations; None: one pass for reduced-precision compute).
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
    cuDNN and in which cuDNN returns the kernel gradient, so that neither is transposed on
    its way (docs/kernels.md). The initial values are nnx.Conv's (the same key, drawn in
    HWIO and transposed), and so are the outputs.
    """

    def __init__(self, in_features: int, out_features: int, size: int, *, dtype,
                 rngs: nnx.Rngs, ohwi_kernel_grad: bool = False):
        hwio = _xavier(rngs.params(), (size, size, in_features, out_features), jnp.float32)
        self.kernel = nnx.Param(jnp.transpose(hwio, (3, 0, 1, 2)))
        self.dtype = dtype
        self.padding = size // 2
        # The kernel gradient by atjax.kernels.ohwi_conv (for tiny images, where XLA:GPU
        # returns it transposed): the same function and gradient.
        self.ohwi_kernel_grad = ohwi_kernel_grad

    def __call__(self, x: jax.Array) -> jax.Array:
        x, kernel = nnx.nn.dtypes.promote_dtype((x, self.kernel.get_value()), dtype=self.dtype)
        if self.ohwi_kernel_grad:
            return ohwi_conv_lib.ohwi_conv(x, kernel, self.padding)
        pad = [(self.padding, self.padding)] * 2
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), pad,
                                            dimension_numbers=("NHWC", "OHWI", "NHWC"))

    def hwio_kernel(self) -> jax.Array:
        """The kernel as [kh, kw, in, out] (nnx.Conv's and atjax.kernels.tap_conv's layout)."""
        return jnp.transpose(self.kernel.get_value(), (1, 2, 3, 0))


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
    `taps`: the first convolution (one input channel) by atjax.kernels.tap_conv, same
    parameters. `ohwi_kernel_grad`: both kernels' gradients by atjax.kernels.ohwi_conv."""

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs,
                 taps: bool = False, ohwi_kernel_grad: bool = False,
                 one_pass: bool | None = None):
        if taps and in_features != 1:
            raise ValueError(f"a tap convolution needs one input channel, not {in_features}")
        self.conv1 = _conv(in_features, out_features, 3, dtype, rngs, ohwi_kernel_grad)
        self.bn1 = BatchNorm(out_features, dtype=dtype, one_pass=one_pass)
        self.conv2 = _conv(out_features, out_features, 3, dtype, rngs, ohwi_kernel_grad)
        self.bn2 = BatchNorm(out_features, dtype=dtype, one_pass=one_pass)
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
                 rngs: nnx.Rngs, one_pass: bool | None = None):
        self.pool = pool
        self.conv = _conv(in_features, out_features, 1, dtype, rngs)
        self.bn = BatchNorm(out_features, dtype=dtype, one_pass=one_pass)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(_avg_pool_2x2(x) if self.pool else x))


class BasicBlock(nnx.Module):
    """[2x2 avg-pool if strided] -> conv3x3-BN-ReLU-dropout -> conv3x3-BN, + shortcut, ReLU."""

    def __init__(self, in_features: int, width: int, *, stride: int, dropout: float, dtype,
                 rngs: nnx.Rngs, kernels: kernels_lib.Kernels = kernels_lib.REFERENCE):
        one_pass = kernels.batchnorm_one_pass
        self.pool = stride == 2  # PANNs downsamples by average pooling, not strided convs
        self.conv1 = _conv(in_features, width, 3, dtype, rngs)
        self.bn1 = BatchNorm(width, dtype=dtype, one_pass=one_pass)
        self.dropout = _dropout(dropout, kernels, rngs)
        self.conv2 = _conv(width, width, 3, dtype, rngs)
        # Zero-initialised last scale: a fresh block starts as the identity (PANNs' init).
        self.bn2 = BatchNorm(width, dtype=dtype, scale_init=0.0, one_pass=one_pass)
        self.shortcut = _shortcut(in_features, width, stride, dtype, rngs, one_pass)

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
                 rngs: nnx.Rngs, kernels: kernels_lib.Kernels = kernels_lib.REFERENCE):
        one_pass = kernels.batchnorm_one_pass
        out_features = width * _EXPANSION["bottleneck"]
        self.pool = stride == 2
        self.conv1 = _conv(in_features, width, 1, dtype, rngs)
        self.bn1 = BatchNorm(width, dtype=dtype, one_pass=one_pass)
        self.conv2 = _conv(width, width, 3, dtype, rngs)
        self.bn2 = BatchNorm(width, dtype=dtype, one_pass=one_pass)
        self.dropout = _dropout(dropout, kernels, rngs)
        self.conv3 = _conv(width, out_features, 1, dtype, rngs)
        self.bn3 = BatchNorm(out_features, dtype=dtype, scale_init=0.0, one_pass=one_pass)
        self.shortcut = _shortcut(in_features, out_features, stride, dtype, rngs, one_pass)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = _avg_pool_2x2(x) if self.pool else x
        out = nnx.relu(self.bn1(self.conv1(out)))
        out = self.dropout(nnx.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(out + identity)


def _shortcut(in_features, out_features, stride, dtype, rngs, one_pass) -> Shortcut | None:
    if stride == 1 and in_features == out_features:
        return None
    return Shortcut(in_features, out_features, pool=stride == 2, dtype=dtype, rngs=rngs,
                    one_pass=one_pass)


def _dropout(rate: float, kernels: kernels_lib.Kernels, rngs: nnx.Rngs) -> dropout_lib.Dropout:
    return dropout_lib.Dropout(rate, mask_bits=kernels.dropout_mask_bits, rngs=rngs)


_BLOCK_CLASSES = {"basic": BasicBlock, "bottleneck": BottleneckBlock}

# ----------------------------------------------------------------------------- network


class ResNet(nnx.Module):
    """A PANNs ResNet on raw waveforms at `config.frontend.sample_rate`. See the module doc.

    `kernels` (atjax.kernels) chooses how BatchNorm statistics, the first convolution,
    conv_block_after1's kernel gradients and the dropout masks are computed."""

    def __init__(self, config: ResNetConfig, *, dtype=jnp.float32,
                 kernels: kernels_lib.Kernels = kernels_lib.REFERENCE, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.logmel = frontend_lib.LogMel(config.frontend)
        # PANNs normalises each mel bin (it transposes mels onto the channel axis).
        self.bn0 = BatchNorm(config.frontend.n_mels, dtype=jnp.float32, one_pass=False)
        self.spec_augment = frontend_lib.SpecAugment(rngs=rngs) if config.spec_augment else None
        one_pass = kernels.batchnorm_one_pass
        self.conv_block1 = ConvBlock(1, config.stem_width, dtype=dtype, rngs=rngs,
                                     taps=kernels.tap_conv, one_pass=one_pass)
        self.feature_dropout = _dropout(config.feature_dropout, kernels, rngs)
        block_class = _BLOCK_CLASSES[config.block]
        stages = []
        features = config.stem_width
        for index, (count, width) in enumerate(zip(config.blocks, config.widths)):
            stage = []
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                stage.append(block_class(features, width, stride=stride,
                                         dropout=config.block_dropout, dtype=dtype, rngs=rngs,
                                         kernels=kernels))
                features = width * _EXPANSION[config.block]
            stages.append(nnx.List(stage))
        self.stages = nnx.List(stages)
        # Runs on the tiny last image (31 x 2 for 10 s clips): see atjax.kernels.ohwi_conv.
        self.conv_block_after1 = ConvBlock(features, config.embed_dim, dtype=dtype, rngs=rngs,
                                           ohwi_kernel_grad=kernels.ohwi_conv,
                                           one_pass=one_pass)
        self.pooled_dropout = _dropout(config.pooled_dropout, kernels, rngs)
        self.fc1 = nnx.Linear(config.embed_dim, config.embed_dim, dtype=dtype,
                              kernel_init=_xavier, rngs=rngs)
        self.embedding_dropout = _dropout(config.embedding_dropout, kernels, rngs)
        self.fc_audioset = nnx.Linear(config.embed_dim, config.num_classes, dtype=dtype,
                                      kernel_init=_xavier, rngs=rngs)

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


def num_parameters(model: ResNet) -> int:
    """Trainable parameters (BatchNorm statistics and frontend constants excluded)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

