"""BERT and RoBERTa text encoders in Flax NNX, loaded from local Hugging Face folders.

The paper compares BERT-Base/Large and RoBERTa-Base/Large as the language encoder (Table 1)
and keeps RoBERTa-Large. transformers 5 ships no Flax models, so the encoder is written here;
transformers only supplies the tokenizer. Checkpoints are read in any of Hugging Face's three
weight formats and checked strictly against the encoder's shapes.

Only `last_hidden_state` is produced: the Agg/Proj heads take the first token ([CLS] / <s>)
or all tokens, so the pooler is not built and its checkpoint weights are skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atjax import attention as attention_lib
from atjax import config as config_lib
from atjax import dropout as dropout_lib
from atjax import gelu as gelu_lib
from atjax import layer_norm as layer_norm_lib
from atjax.column_sum import column_sums

_ACTIVATIONS = {
    # HF's "gelu" is the erf form: jax.nn.gelu(approximate=False), with a cheaper erfc
    # for bfloat16 inputs (same values and gradients; atjax.gelu).
    "gelu": gelu_lib.gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
# Where config.json names a field differently; the others share their names.
_HF_FIELD_NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                   "dropout_rate": "hidden_dropout_prob",
                   "attention_dropout_rate": "attention_probs_dropout_prob"}
# Training choices, not architecture (dropout rates, recomputing the activation): a preset
# may differ from config.json in them.
_NON_ARCHITECTURE_FIELDS = ("dropout_rate", "attention_dropout_rate", "remat_activation",
                            "attention_impl")


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
    # Recompute the MLP activation in the backward pass (`_dense`) rather than keep its
    # intermediates: None is on for 16-bit compute and off for float32, whose autodiff
    # numbers the CPU studies in docs/ were made with (recomputation rounds differently,
    # and 200 training steps amplify that into different results); True/False force it.
    remat_activation: bool | None = None
    # The attention core (atjax.attention): "xla" (einsums), "pallas" (one Pallas kernel
    # per direction: CUDA GPUs, 16, 32 or 64 tokens and head sizes) or "auto" (the kernel
    # where it applies, the einsums elsewhere). The same function either way.
    attention_impl: str = "xla"

    def __post_init__(self):
        if self.model_type not in ("bert", "roberta"):
            raise ValueError(f"model_type must be 'bert' or 'roberta', got {self.model_type!r}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} unsupported; "
                             f"choices: {sorted(_ACTIVATIONS)}")
        if self.remat_activation not in (None, True, False):
            raise ValueError("remat_activation must be None (automatic), True or False, "
                             f"got {self.remat_activation!r}")
        if self.attention_impl not in attention_lib.IMPLS:
            raise ValueError(f"attention_impl must be one of {attention_lib.IMPLS}, "
                             f"got {self.attention_impl!r}")
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


def _layer_norm(norm: nnx.LayerNorm, x, dtype):
    # Statistics in float32 whatever the compute dtype: bfloat16 variance loses too much.
    # atjax.layer_norm rather than calling `norm`: same function, a faster backward on GPUs.
    return layer_norm_lib.layer_norm(x, norm.scale.get_value(), norm.bias.get_value(),
                                     norm.epsilon, dtype)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias over the last axis, the bias cast to y's dtype (as `nnx.Linear` adds it).

    Written out for the backward pass: the bias gradient, a sum of the output gradient over
    every token, is taken in float32 by `atjax.column_sum` (two stages on GPUs, where
    autodiff's single bfloat16 column reduction over 2048 tokens ran at 0.6 TB/s)."""
    return y + bias.astype(y.dtype)


def _add_bias_forward(y, bias):
    return add_bias(y, bias), bias  # kept for its dtype: the bias gradient matches it


def _add_bias_backward(bias, g):
    (dbias,) = column_sums(g)
    return g, dbias.astype(bias.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


def _dense(layer: nnx.Linear, x: jax.Array, activation=None, *, remat: bool = True
           ) -> jax.Array:
    """`layer(x)`, then `activation` if given, with the bias added by `add_bias`: the same
    values (inputs, kernel and bias in the layer's dtype, one dot_general), a faster bias
    gradient on GPUs.

    With `remat`, the activation is rematerialised in the backward pass from the matmul's
    output. Autodiff of the exact GELU keeps two full-size intermediates, erfc(-x/sqrt(2)) and
    -x/sqrt(2), which on an H200 the forward kernel wrote beside its output (3 x 16 MB per
    RoBERTa-Large layer at 2,048 tokens; 24 kernels, 0.66 ms,
    `benchmarks/h200_profile_2026-11-26_b42f9cd_mlp.txt`) and the backward read again.
    Recomputed, the forward writes only the output, and the backward reads the matmul's
    output in their place. The ops are the same; the gradients agree to rounding (fused
    with its consumer, a recomputed bfloat16 intermediate may skip a rounding step)."""
    kernel, bias = layer.kernel.get_value(), layer.bias.get_value()
    dtype = layer.dtype if layer.dtype is not None else jnp.result_type(x, kernel, bias)
    y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                            (((x.ndim - 1,), (0,)), ((), ())), precision=layer.precision)
    if activation is None:
        return add_bias(y, bias)
    if not remat:
        return activation(add_bias(y, bias))
    return jax.checkpoint(lambda y, b: activation(add_bias(y, b)))(y, bias)


class Embeddings(nnx.Module):
    def __init__(self, c: TextEncoderConfig, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        embed = functools.partial(nnx.Embed, features=c.hidden_size, embedding_init=init, rngs=rngs)
        self.word = embed(c.vocab_size)
        self.position = embed(c.max_position_embeddings)
        self.token_type = embed(c.type_vocab_size)
        self.norm = nnx.LayerNorm(c.hidden_size, epsilon=c.layer_norm_eps, rngs=rngs)
        self.dropout = dropout_lib.Dropout(c.dropout_rate, rngs=rngs)
        self.model_type, self.pad_token_id, self.dtype = c.model_type, c.pad_token_id, dtype

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
        return self.dropout(_layer_norm(self.norm, x, self.dtype))


class Layer(nnx.Module):
    """One post-LayerNorm Transformer layer, as in BERT and RoBERTa."""

    def __init__(self, c: TextEncoderConfig, *, dtype, rngs: nnx.Rngs):
        dense = functools.partial(nnx.Linear, dtype=dtype, param_dtype=jnp.float32,
                                  kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        norm = functools.partial(nnx.LayerNorm, c.hidden_size, epsilon=c.layer_norm_eps, rngs=rngs)
        # Query, key and value in one matmul; checkpoints' three matrices are concatenated on load.
        self.qkv = dense(c.hidden_size, 3 * c.hidden_size)
        self.attention_out = dense(c.hidden_size, c.hidden_size)
        self.attention_norm = norm()
        self.mlp_in = dense(c.hidden_size, c.intermediate_size)
        self.mlp_out = dense(c.intermediate_size, c.hidden_size)
        self.mlp_norm = norm()
        self.attention_dropout = dropout_lib.Dropout(c.attention_dropout_rate, rngs=rngs)
        self.dropout = dropout_lib.Dropout(c.dropout_rate, rngs=rngs)
        self.num_heads, self.hidden_act, self.dtype = c.num_heads, c.hidden_act, dtype
        self.attention_impl = c.attention_impl
        self.remat_activation = (c.remat_activation if c.remat_activation is not None
                                 else jnp.dtype(dtype) != jnp.float32)

    def __call__(self, x, key_bias):
        b, n, d = x.shape
        qkv = _dense(self.qkv, x).reshape(b, n, 3 * self.num_heads, d // self.num_heads)
        # Written out rather than jax.nn.dot_product_attention, which has no dropout on the
        # attention probabilities that BERT/RoBERTa fine-tuning uses. The mask is drawn here,
        # as `self.attention_dropout(probs)` would draw it, and applied inside the core.
        keep, keep_prob = self.attention_dropout.keep_mask((b, self.num_heads, n, n))
        context = attention_lib.attention(qkv, key_bias, keep, num_heads=self.num_heads,
                                          keep_prob=keep_prob, impl=self.attention_impl)
        context = context.reshape(b, n, d)
        x = x + self.dropout(_dense(self.attention_out, context))
        x = _layer_norm(self.attention_norm, x, self.dtype)
        h = _dense(self.mlp_out, _dense(self.mlp_in, x, _ACTIVATIONS[self.hidden_act],
                                        remat=self.remat_activation))
        return _layer_norm(self.mlp_norm, x + self.dropout(h), self.dtype)


class TextEncoder(nnx.Module):
    """BERT/RoBERTa body: token ids -> last_hidden_state [B, L, D].

    Params are float32; `dtype` is the compute dtype (softmax and LayerNorm stay float32).
    float32 matmuls follow `jax_default_matmul_precision`: TF32 on recent NVIDIA GPUs unless
    it is set to "highest" (a run-wide choice, so it is left to the caller).
    Dropout is active in train mode (`.train()`, the NNX default) and draws from the "dropout"
    stream; `.eval()` makes the encoder deterministic.
    """

    def __init__(self, config: TextEncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([Layer(config, dtype=dtype, rngs=rngs)
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


# ---- Checkpoint import ----------------------------------------------------------------------
# Checkpoint tensors are first put in Hugging Face's Flax layout and naming (kernels (in, out),
# "embedding", LayerNorm "scale"), whatever file they came from, then matched by name.

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "flax_model.msgpack")
_BASE_PREFIXES = ("bert.", "roberta.")  # checkpoints of *ForMaskedLM etc. nest the body
_UNUSED = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")  # known, not needed
_TASK_HEADS = ("cls.", "lm_head.", "classifier.", "qa_outputs.")  # beside the body in such files
# Our module names -> Hugging Face's, in `embeddings.` and in `encoder.layer.{i}.`.
_EMBEDDING_NAMES = {"word": "word_embeddings", "position": "position_embeddings",
                    "token_type": "token_type_embeddings", "norm": "LayerNorm"}
_LAYER_NAMES = {"qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
                "attention_out": ("attention.output.dense",),
                "attention_norm": ("attention.output.LayerNorm",),
                "mlp_in": ("intermediate.dense",), "mlp_out": ("output.dense",),
                "mlp_norm": ("output.LayerNorm",)}


def _param_sources(encoder: TextEncoder) -> dict[tuple, tuple[list[str], tuple]]:
    """Each param's checkpoint name(s) and their shape; several names are concatenated."""
    sources = {}
    for path, param in nnx.state(encoder, nnx.Param).flat_state():
        if path[0] == "embeddings":
            names = [f"embeddings.{_EMBEDDING_NAMES[path[1]]}.{path[2]}"]
        else:
            _, i, module, leaf = path
            names = [f"encoder.layer.{i}.{m}.{leaf}" for m in _LAYER_NAMES[module]]
        *lead, last = param.shape
        sources[path] = names, (*lead, last // len(names))
    return sources


def _torch_to_flax_name(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    module, _, leaf = name.rpartition(".")
    if leaf in ("gamma", "beta"):  # LayerNorm names of TF-converted checkpoints (bert-base-uncased)
        leaf = "scale" if leaf == "gamma" else "bias"
    elif leaf == "weight":
        if module.endswith("LayerNorm"):
            leaf = "scale"
        elif module.endswith("_embeddings"):
            leaf = "embedding"
        elif array.ndim == 2:  # torch Linear stores (out, in)
            leaf, array = "kernel", array.T
    return f"{module}.{leaf}", array


def _read_tensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    if file.name.endswith(".index.json"):  # sharded safetensors
        shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in _read_tensors(file.parent / shard).items()}
    if file.suffix == ".msgpack":
        from flax import serialization
        tree = serialization.msgpack_restore(file.read_bytes())
        tree = tree.get("params", tree) if len(tree) == 1 else tree
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {".".join(str(k.key) for k in path): np.asarray(v) for path, v in flat}
    if file.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(file), framework="numpy") as f:
            torch_named = {k: f.get_tensor(k) for k in f.keys()}
    elif file.suffix == ".bin":
        try:
            import torch
        except ImportError:
            raise ImportError(f"reading {file} needs PyTorch; install torch or use a folder "
                              "with model.safetensors") from None
        state = torch.load(file, map_location="cpu", weights_only=True)
        torch_named = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
                       for k, v in state.items()}
    else:
        raise ValueError(f"{file}: not a Hugging Face weights file ({', '.join(_WEIGHT_FILES)})")
    return dict(_torch_to_flax_name(k, v) for k, v in torch_named.items())


def _weights_file(path: pathlib.Path) -> pathlib.Path:
    if path.is_file():
        return path
    for name in _WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path} holds no weights; expected one of {', '.join(_WEIGHT_FILES)}")


def _listing(items: list[str], limit: int = 12) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_weights(encoder: TextEncoder, path) -> None:
    """Loads a Hugging Face BERT/RoBERTa checkpoint (folder or weights file) into `encoder`.

    Strict: every encoder param must be present with its exact shape, and every checkpoint
    tensor must be used, except the known unused ones (pooler, buffers, task heads).
    """
    file = _weights_file(pathlib.Path(path))
    tensors = _read_tensors(file)
    if any(k.startswith(_BASE_PREFIXES) for k in tensors):
        body = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(_BASE_PREFIXES)}
        outside = [k for k in tensors if not k.startswith(_BASE_PREFIXES)]
    else:
        body, outside = tensors, []
    sources = _param_sources(encoder)
    expected = {name: shape for names, shape in sources.values() for name in names}
    skipped = [k for k in body if k not in expected and k.startswith(_UNUSED)]
    skipped += [k for k in outside if k.startswith(_TASK_HEADS)]
    unexpected = sorted({*body, *outside} - set(expected) - set(skipped))
    missing = sorted(set(expected) - set(body))
    misshaped = [f"{k} {tuple(body[k].shape)} (encoder needs {v})"
                 for k, v in expected.items() if k in body and tuple(body[k].shape) != v]
    not_float = [k for k in expected
                 if k in body and not jnp.issubdtype(body[k].dtype, jnp.floating)]
    if missing or unexpected or misshaped or not_float:
        c = encoder.config
        problems = [f"{label}: {_listing(keys)}" for label, keys in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped),
            ("not floating point", not_float)) if keys]
        raise ValueError(f"checkpoint {file} does not fit a {c.model_type} encoder with "
                         f"{c.num_layers} layers of width {c.hidden_size} and vocabulary "
                         f"{c.vocab_size} (names in Hugging Face's Flax layout); "
                         + "; ".join(problems))
    new = {p: jnp.asarray(np.concatenate([body[n] for n in names], axis=-1), jnp.float32)
           for p, (names, _) in sources.items()}
    nnx.update(encoder, nnx.State.from_flat_path(new))
    logging.info("loaded %d tensors from %s (%d known ones unused: pooler, buffers, task heads)",
                 len(expected), file, len(skipped))


# ---- Tokenizer and folder loading -----------------------------------------------------------


def _local_folder(path) -> pathlib.Path:
    folder = pathlib.Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise NotADirectoryError(f"{path} is a file; pass the model's folder")
    raise FileNotFoundError(
        f"{str(path)!r} is not a local folder, and atjax never downloads models. On a machine "
        f"with internet run `huggingface-cli download {path} --local-dir models/{folder.name}` "
        "(or `hf download ...`), copy that folder here and pass its path.")


class Tokenizer:
    """The checkpoint's own Hugging Face tokenizer, padding and truncating to `max_length`."""

    def __init__(self, path, max_length: int = 32):
        from transformers import AutoTokenizer  # heavy; only needed when text is tokenised

        self.path = _local_folder(path)
        self.max_length = max_length
        self._hf = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        if self._hf.pad_token_id is None:
            raise ValueError(f"the tokenizer in {self.path} defines no padding token")
        # The heads read [CLS] / <s> at position 0 and the encoder numbers RoBERTa's positions
        # from the left, so padding and truncation must happen on the right, whatever the
        # folder's tokenizer_config.json says.
        self._hf.padding_side = "right"
        self._hf.truncation_side = "right"

    @property
    def vocab_size(self) -> int:
        return len(self._hf)  # including added tokens: the largest id is vocab_size - 1

    @property
    def pad_token_id(self) -> int:
        return self._hf.pad_token_id

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("Tokenizer takes a list of texts, not one string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} is empty or not a string: {text!r}")
        if not texts:
            empty = np.zeros((0, self.max_length), np.int32)
            return {"input_ids": empty, "attention_mask": empty.copy()}
        out = self._hf(texts, padding="max_length", truncation=True, max_length=self.max_length,
                       return_attention_mask=True, return_token_type_ids=False, return_tensors="np")
        return {k: out[k].astype(np.int32) for k in ("input_ids", "attention_mask")}

    def save(self, directory) -> None:
        self._hf.save_pretrained(str(directory))


def check_folder_config(config: TextEncoderConfig, path) -> None:
    """Refuses to load `path`'s weights into an encoder whose architecture differs from its
    config.json (a preset, or overrides): the shapes can agree while the function does not
    (hidden_act, layer_norm_eps, pad_token_id). Training settings may differ."""
    folder = _local_folder(path)
    found = TextEncoderConfig.from_hf_config(folder)
    differ = [f"{f.name} {getattr(config, f.name)!r} vs {getattr(found, f.name)!r}"
              for f in dataclasses.fields(config) if f.name not in _NON_ARCHITECTURE_FIELDS
              and getattr(config, f.name) != getattr(found, f.name)]
    if differ:
        raise config_lib.ConfigError(f"the text encoder config does not match {folder}/config.json "
                         f"(config vs file): {'; '.join(differ)}")


def check_tokenizer(config: TextEncoderConfig, tokenizer: Tokenizer) -> None:
    """Refuses a tokenizer that the encoder cannot read: an id beyond the vocabulary embeds
    as NaN, another padding id breaks RoBERTa's positions, and a longer input has no
    position embedding."""
    where = tokenizer.path
    if tokenizer.vocab_size > config.vocab_size:
        raise config_lib.ConfigError(f"{where}: tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"vocabulary is {config.vocab_size}")
    if tokenizer.pad_token_id != config.pad_token_id:
        raise config_lib.ConfigError(f"{where}: tokenizer pads with id {tokenizer.pad_token_id} but the "
                         f"model's pad_token_id is {config.pad_token_id}")
    if tokenizer.max_length > config.max_tokens:
        raise config_lib.ConfigError(f"max_length {tokenizer.max_length} exceeds the model's "
                         f"{config.max_tokens} positions ({where})")


def from_pretrained(path, *, dtype=jnp.float32, max_length: int = 32,
                    config: TextEncoderConfig | None = None) -> tuple[TextEncoder, Tokenizer]:
    """(encoder, tokenizer) from a local Hugging Face folder; the encoder is in inference
    mode (`.eval()`: no dropout), as transformers' `from_pretrained` and
    `panns.from_checkpoint` return theirs.

    `config` (e.g. a preset) is checked against the folder's config.json; its training
    settings (dropout rates, `remat_activation`) win.
    For fine-tuning call `encoder.train()`; dropout then draws from a stream seeded 0:
    reseed with `nnx.reseed(encoder, dropout=seed)`.
    """
    folder = _local_folder(path)
    if config is None:
        config = TextEncoderConfig.from_hf_config(folder)
    else:
        check_folder_config(config, folder)
    tokenizer = Tokenizer(folder, max_length)
    check_tokenizer(config, tokenizer)
    # The strict load overwrites every param, so skip the random init (17 s for RoBERTa-Large
    # on two CPU cores): build the structure abstractly, then give dropout real keys.
    encoder = nnx.eval_shape(
        lambda: TextEncoder(config, dtype=dtype, rngs=nnx.Rngs(params=0, dropout=0)))
    nnx.reseed(encoder, dropout=0)
    load_weights(encoder, folder)
    encoder.eval()
    return encoder, tokenizer
