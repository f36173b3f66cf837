"""Agg/Proj heads: map an encoder's output into the shared audio-text space.

Two kinds, as in the paper (Sec. 2.1):
- `mlp` (the baseline): temporal pooling, then an MLP projection. Pooling happens before
  the head: the audio side passes the ResNet's clip embedding (max+mean over time inside
  PANNs), the text side its first token ([CLS] / <s>).
- `transformer` (the proposed model): a 2-layer, 2-head Transformer encoder with
  positional encoding over all time steps, with a learned CLS token prepended; its output
  at the CLS position is the representation. The audio side sees the sequence of 1 s chunk
  embeddings with the chunks of exact zeros (padding) masked, the text side the token
  embeddings with their padding mask.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from atjax.kernels import dropout as dropout_lib


class MLPHead(nnx.Module):
    """Linear -> ReLU -> dropout -> Linear on a pooled vector `[B, in_dim]`."""

    pooled = True  # consumes one vector per example

    def __init__(self, in_dim: int, out_dim: int, *, dropout_rate: float = 0.1,
                 dtype=jnp.float32, mask_bits: int = 32, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(in_dim, out_dim, dtype=dtype, rngs=rngs)
        self.dropout = dropout_lib.Dropout(dropout_rate, mask_bits=mask_bits, rngs=rngs)
        self.fc2 = nnx.Linear(out_dim, out_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        del mask  # pooled input: nothing to mask
        return self.fc2(self.dropout(jax.nn.relu(self.fc1(x))))


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
    """Fixed sinusoidal encoding (Vaswani et al.): works for any sequence length, so
    Clotho's 15-30 s clips need no learned table sized for the longest clip."""
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = position * inv_freq[None, :]
    enc = jnp.zeros((length, dim), jnp.float32)
    enc = enc.at[:, 0::2].set(jnp.sin(angles))
    enc = enc.at[:, 1::2].set(jnp.cos(angles[:, : dim // 2]))
    return enc


class TransformerLayer(nnx.Module):
    """Pre-LayerNorm encoder layer. Pre-LN (not PyTorch's default post-LN) because the
    head trains from scratch on top of pretrained encoders at a small learning rate
    (1e-5), where pre-LN is markedly more stable."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout_rate: float,
                 *, dtype, mask_bits: int = 32, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            num_heads=num_heads, in_features=dim, dtype=dtype, dropout_rate=dropout_rate,
            decode=False, deterministic=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_dim, dim, dtype=dtype, rngs=rngs)
        self.dropout = dropout_lib.Dropout(dropout_rate, mask_bits=mask_bits, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        # mask: [B, 1, L, L] boolean, True where attention is allowed.
        h = self.norm1(x)
        x = x + self.dropout(self.attention(h, h, h, mask=mask))
        h = self.norm2(x)
        return x + self.dropout(self.mlp_out(jax.nn.gelu(self.mlp_in(h))))


class TransformerHead(nnx.Module):
    """CLS-token Transformer over a sequence `[B, L, in_dim]` with a validity mask `[B, L]`."""

    pooled = False  # consumes the whole sequence

    def __init__(self, in_dim: int, out_dim: int, *, num_layers: int = 2, num_heads: int = 2,
                 mlp_dim: int | None = None, dropout_rate: float = 0.1,
                 dtype=jnp.float32, mask_bits: int = 32, rngs: nnx.Rngs):
        self.input_proj = nnx.Linear(in_dim, out_dim, dtype=dtype, rngs=rngs)
        self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, out_dim)) * 0.02)
        self.layers = nnx.List([
            TransformerLayer(out_dim, num_heads, mlp_dim or 2 * out_dim, dropout_rate,
                             dtype=dtype, mask_bits=mask_bits, rngs=rngs)
            for _ in range(num_layers)
        ])
        self.final_norm = nnx.LayerNorm(out_dim, rngs=rngs)
        self.dtype = dtype

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        batch, length, _ = x.shape
        if mask is None:
            mask = jnp.ones((batch, length), bool)
        h = self.input_proj(x)
        cls = jnp.broadcast_to(self.cls[...].astype(h.dtype), (batch, 1, h.shape[-1]))
        h = jnp.concatenate([cls, h], axis=1)
        h = h + sinusoidal_positions(length + 1, h.shape[-1]).astype(h.dtype)[None]
        valid = jnp.concatenate([jnp.ones((batch, 1), bool), mask.astype(bool)], axis=1)
        attn_mask = valid[:, None, None, :]  # keys only: padded queries are never read
        for layer in self.layers:
            h = layer(h, attn_mask)
        return self.final_norm(h[:, 0])


HEADS = {"mlp": MLPHead, "transformer": TransformerHead}


def make_head(kind: str, in_dim: int, out_dim: int, *, dropout_rate: float = 0.1,
              dtype=jnp.float32, mask_bits: int = 32, rngs: nnx.Rngs) -> nnx.Module:
    """An Agg/Proj head; `mask_bits` is its dropout masks' (atjax.kernels.dropout)."""
    if kind not in HEADS:
        raise ValueError(f"unknown Agg/Proj head {kind!r}; choose one of {sorted(HEADS)}")
    return HEADS[kind](in_dim, out_dim, dropout_rate=dropout_rate, dtype=dtype,
                       mask_bits=mask_bits, rngs=rngs)
