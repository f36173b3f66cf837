"""BERT and RoBERTa text encoders in Flax NNX and their presets; the model only.

The paper compares BERT-Base/Large and RoBERTa-Base/Large as the language encoder (Table 1)
and keeps RoBERTa-Large. transformers 5 ships no Flax models, so the encoder is written here.
Weights and the tokenizer come from local Hugging Face folders through atjax.encoders.text
(`from_pretrained`, `Tokenizer`).

Only `last_hidden_state` is produced: the Agg/Proj heads take the first token ([CLS] / <s>)
or all tokens, so the pooler is not built and its checkpoint weights are skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx

from atjax import kernels as kernels_lib
from atjax.kernels import attention as attention_lib
from atjax.kernels import dropout as dropout_lib
from atjax.kernels import gelu as gelu_lib
from atjax.kernels import layer_norm as layer_norm_lib
from atjax.kernels.column_sum import column_sums

_ACTIVATIONS = {
    # HF's "gelu" is the erf form.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
# Where config.json names a field differently; the others share their names.
_HF_FIELD_NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                   "dropout_rate": "hidden_dropout_prob",
                   "attention_dropout_rate": "attention_probs_dropout_prob"}
# Training choices, not architecture: a preset may differ from config.json in them.
NON_ARCHITECTURE_FIELDS = ("dropout_rate", "attention_dropout_rate")


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    model_type: str  # "bert" | "roberta"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    pad_token_id: int
    layer_norm_eps: float
    hidden_act: str = "gelu"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1

    def __post_init__(self):
        if self.model_type not in ("bert", "roberta"):
            raise ValueError(f"model_type must be 'bert' or 'roberta', got {self.model_type!r}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} unsupported; "
                             f"choices: {sorted(_ACTIVATIONS)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")

    @property
    def max_tokens(self) -> int:
        """Longest input: RoBERTa numbers positions from pad_token_id + 1, losing those slots."""
        offset = self.pad_token_id + 1 if self.model_type == "roberta" else 0
        return self.max_position_embeddings - offset

    @classmethod
    def from_hf_config(cls, path_or_dict) -> TextEncoderConfig:
        """From a Hugging Face config: a dict, a config.json file, or the folder holding it."""
        if isinstance(path_or_dict, dict):
            hf, source = path_or_dict, "config dict"
        else:
            path = pathlib.Path(path_or_dict)
            path = path / "config.json" if path.is_dir() else path
            if not path.is_file():
                raise FileNotFoundError(f"no Hugging Face config.json at {path}")
            hf, source = json.loads(path.read_text()), str(path)
        if hf.get("model_type") not in ("bert", "roberta"):
            raise ValueError(f"{source}: model_type {hf.get('model_type')!r} "
                             "is not 'bert' or 'roberta'")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: only absolute position embeddings are supported, "
                             f"got {hf['position_embedding_type']!r}")
        # A decoder masks attention causally (and may cross-attend): transformers' outputs
        # then differ from this bidirectional encoder's, so such a folder is refused.
        for flag in ("is_decoder", "add_cross_attention"):
            if hf.get(flag):
                raise ValueError(f"{source}: {flag}=true; atjax's text encoder is a "
                                 "bidirectional encoder only")
        fields = {}
        for field in dataclasses.fields(cls):
            name = _HF_FIELD_NAMES.get(field.name, field.name)
            if name in hf:
                fields[field.name] = hf[name]
            elif field.default is dataclasses.MISSING:
                raise ValueError(f"{source} lacks field {name!r}")
        return cls(**fields)


def _preset(model_type, width, layers, heads):
    if model_type == "bert":  # the uncased checkpoints
        vocab = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
                     pad_token_id=0, layer_norm_eps=1e-12)
    else:
        vocab = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                     pad_token_id=1, layer_norm_eps=1e-5)
    return TextEncoderConfig(model_type, hidden_size=width, num_layers=layers, num_heads=heads,
                             intermediate_size=4 * width, **vocab)


PRESETS: dict[str, TextEncoderConfig] = {
    "bert-base": _preset("bert", 768, 12, 12),
    "bert-large": _preset("bert", 1024, 24, 16),
    "roberta-base": _preset("roberta", 768, 12, 12),
    "roberta-large": _preset("roberta", 1024, 24, 16),
}


def preset(name: str) -> TextEncoderConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown text encoder {name!r}; choices: {', '.join(PRESETS)}")
    return PRESETS[name]


def _activation(name: str, kernels: kernels_lib.Kernels):
    """The activation `name`; the exact GELU by atjax.kernels.gelu where chosen (the same
    values and gradients, a cheaper erfc for bfloat16)."""
    if name == "gelu" and kernels.gelu:
        return gelu_lib.gelu
    return _ACTIVATIONS[name]


def layer_norm(norm: nnx.LayerNorm, x: jax.Array, kernels: kernels_lib.Kernels) -> jax.Array:
    """`norm(x)`, statistics in float32 whatever the compute dtype (bfloat16 variance loses
    too much); by atjax.kernels.layer_norm where chosen (the same function)."""
    if kernels.layer_norm:
        return layer_norm_lib.layer_norm(x, norm.scale.get_value(), norm.bias.get_value(),
                                         norm.epsilon, norm.dtype)
    return norm(x)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias over the last axis, the bias cast to y's dtype (as `nnx.Linear` adds it),
    with the bias gradient summed in float32 by atjax.kernels.column_sum."""
    return y + bias.astype(y.dtype)


def _add_bias_forward(y, bias):
    return add_bias(y, bias), bias  # kept for its dtype: the bias gradient matches it


def _add_bias_backward(bias, g):
    (dbias,) = column_sums(g)
    return g, dbias.astype(bias.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


def dense(layer: nnx.Linear, x: jax.Array, activation=None, *, column_sum: bool = False,
          remat: bool = False) -> jax.Array:
    """`layer(x)`, then `activation` if given.

    column_sum: the bias added by `add_bias` (the same values: inputs, kernel and bias in
    the layer's dtype, one dot_general; the bias gradient by atjax.kernels.column_sum).
    remat: the activation recomputed in the backward pass from the matmul's output instead
    of keeping its intermediates (the same ops; gradients equal to rounding)."""
    if column_sum:
        kernel, bias = layer.kernel.get_value(), layer.bias.get_value()
        dtype = layer.dtype if layer.dtype is not None else jnp.result_type(x, kernel, bias)
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                                (((x.ndim - 1,), (0,)), ((), ())), precision=layer.precision)
        if activation is None:
            return add_bias(y, bias)
        if not remat:
            return activation(add_bias(y, bias))
        return jax.checkpoint(lambda y, b: activation(add_bias(y, b)))(y, bias)
    y = layer(x)
    if activation is None:
        return y
    return jax.checkpoint(activation)(y) if remat else activation(y)


def _layer_norm_module(c: TextEncoderConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Float32 parameters and statistics (two passes), output in the compute dtype.
    return nnx.LayerNorm(c.hidden_size, epsilon=c.layer_norm_eps, dtype=dtype,
                         param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs)


class Embeddings(nnx.Module):
    def __init__(self, c: TextEncoderConfig, *, dtype, kernels: kernels_lib.Kernels,
                 rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        embed = functools.partial(nnx.Embed, features=c.hidden_size, embedding_init=init, rngs=rngs)
        self.word = embed(c.vocab_size)
        self.position = embed(c.max_position_embeddings)
        self.token_type = embed(c.type_vocab_size)
        self.norm = _layer_norm_module(c, dtype, rngs)
        self.dropout = dropout_lib.Dropout(c.dropout_rate, mask_bits=kernels.dropout_mask_bits,
                                           rngs=rngs)
        self.model_type, self.pad_token_id, self.kernels = c.model_type, c.pad_token_id, kernels

    def __call__(self, input_ids):
        if self.model_type == "roberta":
            # RoBERTa numbers real tokens pad+1, pad+2, ... and gives padding the pad slot.
            # Like transformers, padding is read from the ids, not from the attention mask.
            real = (input_ids != self.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(real, axis=1) * real + self.pad_token_id
        else:
            positions = jnp.arange(input_ids.shape[1])[None, :]
        # Single-segment input: every token has token type 0.
        x = self.word(input_ids) + self.position(positions) + self.token_type.embedding[0]
        return self.dropout(layer_norm(self.norm, x, self.kernels))


class Layer(nnx.Module):
    """One post-LayerNorm Transformer layer, as in BERT and RoBERTa."""

    def __init__(self, c: TextEncoderConfig, *, dtype, kernels: kernels_lib.Kernels,
                 rngs: nnx.Rngs):
        dense_layer = functools.partial(nnx.Linear, dtype=dtype, param_dtype=jnp.float32,
                                        kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        # Query, key and value in one matmul; checkpoints' three matrices are concatenated on load.
        self.qkv = dense_layer(c.hidden_size, 3 * c.hidden_size)
        self.attention_out = dense_layer(c.hidden_size, c.hidden_size)
        self.attention_norm = _layer_norm_module(c, dtype, rngs)
        self.mlp_in = dense_layer(c.hidden_size, c.intermediate_size)
        self.mlp_out = dense_layer(c.intermediate_size, c.hidden_size)
        self.mlp_norm = _layer_norm_module(c, dtype, rngs)
        # The attention probabilities keep 32-bit dropout masks whatever the setting: their
        # float32 softmax is fused with the masking on GPUs, and 16-bit masks there made XLA
        # split that fusion (docs/kernels.md).
        self.attention_dropout = dropout_lib.Dropout(c.attention_dropout_rate, rngs=rngs)
        self.dropout = dropout_lib.Dropout(c.dropout_rate, mask_bits=kernels.dropout_mask_bits,
                                           rngs=rngs)
        self.num_heads, self.hidden_act, self.kernels = c.num_heads, c.hidden_act, kernels
        self.remat_activation = (kernels.remat_activation
                                 if kernels.remat_activation is not None
                                 else jnp.dtype(dtype) != jnp.float32)

    def _dense(self, layer, x, activation=None):
        return dense(layer, x, activation, column_sum=self.kernels.column_sum,
                     remat=self.remat_activation)

    def __call__(self, x, key_bias):
        b, n, d = x.shape
        qkv = self._dense(self.qkv, x).reshape(b, n, 3 * self.num_heads, d // self.num_heads)
        # Written out rather than jax.nn.dot_product_attention, which has no dropout on the
        # attention probabilities that BERT/RoBERTa fine-tuning uses. The mask is drawn here,
        # as `self.attention_dropout(probs)` would draw it, and applied inside the core.
        keep, keep_prob = self.attention_dropout.keep_mask((b, self.num_heads, n, n))
        context = attention_lib.attention(qkv, key_bias, keep, num_heads=self.num_heads,
                                          keep_prob=keep_prob, impl=self.kernels.attention)
        context = context.reshape(b, n, d)
        x = x + self.dropout(self._dense(self.attention_out, context))
        x = layer_norm(self.attention_norm, x, self.kernels)
        activation = _activation(self.hidden_act, self.kernels)
        h = self._dense(self.mlp_out, self._dense(self.mlp_in, x, activation))
        return layer_norm(self.mlp_norm, x + self.dropout(h), self.kernels)


class TextEncoder(nnx.Module):
    """BERT/RoBERTa body: token ids -> last_hidden_state [B, L, D].

    Params are float32; `dtype` is the compute dtype (softmax and LayerNorm stay float32).
    float32 matmuls follow `jax_default_matmul_precision`: TF32 on recent NVIDIA GPUs unless
    it is set to "highest" (a run-wide choice, so it is left to the caller).
    `kernels` (atjax.kernels) chooses how LayerNorm, the dense layers, GELU, dropout masks
    and the attention core are computed; every choice computes the same function.
    Dropout is active in train mode (`.train()`, the NNX default) and draws from the "dropout"
    stream; `.eval()` makes the encoder deterministic.
    """

    def __init__(self, config: TextEncoderConfig, *, dtype=jnp.float32,
                 kernels: kernels_lib.Kernels = kernels_lib.REFERENCE, rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        self.embeddings = Embeddings(config, dtype=dtype, kernels=kernels, rngs=rngs)
        self.layers = nnx.List([Layer(config, dtype=dtype, kernels=kernels, rngs=rngs)
                                for _ in range(config.num_layers)])

    @property
    def output_dim(self) -> int:
        return self.config.hidden_size

    def __call__(self, input_ids, attention_mask) -> jax.Array:
        if input_ids.shape[1] > self.config.max_tokens:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed this encoder's "
                             f"{self.config.max_tokens} positions")
        # Additive mask in float32: padded keys get the most negative float, so exp() gives 0.
        key_bias = jnp.where(attention_mask > 0, 0.0, jnp.finfo(jnp.float32).min)
        with jax.named_scope("embeddings"):  # scopes label ops in profiles
            x = self.embeddings(input_ids)
        with jax.named_scope("layers"):
            for layer in self.layers:
                x = layer(x, key_bias)
        return x
