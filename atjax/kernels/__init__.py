"""How the model's ops are computed: plain Flax/XLA ops, or kernels written for GPUs.

One model setting chooses, `model.kernels`:

  "reference"  plain ops: nnx.LayerNorm, nnx.Linear, jax.nn.gelu, XLA convolutions and
               autodiff, nnx.Dropout's 32-bit masks, the einsum attention core, BatchNorm
               statistics in two passes, no recomputation, no weight copies.
  "fast"       the forms that made the training step faster on NVIDIA GPUs (each module
               of this package says what it does and why; docs/kernels.md gives the
               measurements). Each computes the same function as its reference; on CPUs
               most fall back to the reference ops themselves (`lax.platform_dependent`).

`model.kernel_overrides` sets single ops against the setting, e.g. {"tap_conv": False}
(see `Kernels` for the ops). The choice is resolved once, at construction
(`choose`), and handed to the modules that need it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SETTINGS = ("reference", "fast")
ATTENTION_IMPLS = ("xla", "pallas", "auto")  # atjax.kernels.attention
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")  # jax.random's PRNG implementations


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The implementation of each op. The defaults are "reference"."""

    # LayerNorm with a backward pass whose parameter sums XLA cannot fuse into the input
    # gradient (atjax.kernels.layer_norm); else nnx.LayerNorm.
    layer_norm: bool = False
    # Dense layers of the text encoder and heads with the bias gradient summed in two
    # stages (atjax.kernels.column_sum); else nnx.Linear.
    column_sum: bool = False
    # The exact GELU with a cheaper erfc for bfloat16 (atjax.kernels.gelu); else jax.nn.gelu.
    gelu: bool = False
    # The first convolution of the audio encoder as taps and a matmul (atjax.kernels.tap_conv).
    tap_conv: bool = False
    # conv_block_after1's kernel gradient in the kernel's layout (atjax.kernels.ohwi_conv).
    ohwi_conv: bool = False
    # Random bits per dropout decision (atjax.kernels.dropout): 32 is nnx.Dropout; 16
    # hashes a quarter as much at every site but the text attention probabilities.
    dropout_mask_bits: int = 32
    # The text attention core (atjax.kernels.attention): "xla" einsums, "pallas" kernel,
    # "auto" the kernel where it applies.
    attention: str = "xla"
    # Recompute the text MLP activation in the backward pass: None is on for 16-bit compute.
    remat_activation: bool | None = False
    # BatchNorm statistics in one pass over the activations: None is on for 16-bit compute.
    batchnorm_one_pass: bool | None = False
    # Keep compute-dtype copies of the weights in the train state (16-bit compute only).
    weight_copies: bool = False
    # The PRNG of dropout and SpecAugment.
    rng_impl: str = "threefry2x32"

    def __post_init__(self):
        for name in ("layer_norm", "column_sum", "gelu", "tap_conv", "ohwi_conv",
                     "weight_copies"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"kernel {name} must be true or false, "
                                 f"got {getattr(self, name)!r}")
        for name in ("remat_activation", "batchnorm_one_pass"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"kernel {name} must be None (on for 16-bit compute), true "
                                 f"or false, got {getattr(self, name)!r}")
        bits = self.dropout_mask_bits
        if isinstance(bits, bool) or bits not in (16, 32):
            raise ValueError(f"kernel dropout_mask_bits must be 16 or 32, got {bits!r}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"kernel attention must be one of {ATTENTION_IMPLS}, "
                             f"got {self.attention!r}")
        if self.rng_impl not in RNG_IMPLS:
            raise ValueError(f"kernel rng_impl must be one of {RNG_IMPLS}, "
                             f"got {self.rng_impl!r}")


REFERENCE = Kernels()
FAST = Kernels(layer_norm=True, column_sum=True, gelu=True, tap_conv=True, ohwi_conv=True,
               dropout_mask_bits=16, attention="auto", remat_activation=None,
               batchnorm_one_pass=None, weight_copies=True)
OPS = tuple(field.name for field in dataclasses.fields(Kernels))


def choose(setting: str = "reference", overrides: Mapping[str, Any] | None = None) -> Kernels:
    """The `Kernels` of a `model.kernels` setting with `model.kernel_overrides` applied;
    ValueError naming the setting or op that is not known."""
    if setting not in SETTINGS:
        raise ValueError(f"model.kernels must be one of {SETTINGS}, got {setting!r}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OPS))
    if unknown:
        raise ValueError(f"model.kernel_overrides: unknown ops {unknown}; the ops are {OPS}")
    base = FAST if setting == "fast" else REFERENCE
    return dataclasses.replace(base, **overrides)
