"""Hugging Face BERT/RoBERTa folders for the text encoder of atjax.encoders.bert: weights,
tokenizer and `from_pretrained`.

Checkpoints are read from local folders in any of Hugging Face's three weight formats
(safetensors, possibly sharded; PyTorch .bin; Flax msgpack) and checked strictly against
the encoder's shapes and the folder's config.json; transformers only supplies the tokenizer.
The model's names (TextEncoder, TextEncoderConfig, preset, ...) are re-exported from
atjax.encoders.bert so that `text.X` reaches them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atjax import checkpoint as ckpt_lib
from atjax import config as config_lib
from atjax import kernels as kernels_lib
from atjax.encoders.bert import (  # noqa: F401  (re-exported: the model, as text.X)
    NON_ARCHITECTURE_FIELDS, PRESETS, TextEncoder, TextEncoderConfig, preset)

log = logging.getLogger(__name__)

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


def load_weights(encoder: TextEncoder, path) -> None:
    """Loads a Hugging Face BERT/RoBERTa checkpoint (folder or weights file) into `encoder`.

    Strict: every encoder param must be present with its exact shape, and every checkpoint
    tensor must be used, except the known unused ones (pooler, buffers, task heads);
    otherwise CheckpointMismatchError (atjax.checkpoint) names every offender.
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
    saved = {k: v.shape for k, v in body.items() if k not in skipped}
    saved.update((k, tensors[k].shape) for k in outside if k not in skipped)
    not_float = [k for k in expected
                 if k in body and not jnp.issubdtype(body[k].dtype, jnp.floating)]
    c = encoder.config
    error = ckpt_lib.mismatch(
        f"checkpoint {file}", f"a {c.model_type} encoder with {c.num_layers} layers of width "
        f"{c.hidden_size} and vocabulary {c.vocab_size} (names in Hugging Face's Flax layout)",
        saved, expected, problems=[("not floating point", not_float)])
    if error:
        raise error
    new = {p: jnp.asarray(np.concatenate([body[n] for n in names], axis=-1), jnp.float32)
           for p, (names, _) in sources.items()}
    nnx.update(encoder, nnx.State.from_flat_path(new))
    log.info("loaded %d tensors from %s (%d known ones unused: pooler, buffers, task heads)",
             len(expected), file, len(skipped))


def check_folder_config(config: TextEncoderConfig, path) -> None:
    """Refuses to load `path`'s weights into an encoder whose architecture differs from its
    config.json (a preset, or overrides): the shapes can agree while the function does not
    (hidden_act, layer_norm_eps, pad_token_id). Training settings may differ."""
    folder = local_folder(path)
    found = TextEncoderConfig.from_hf_config(folder)
    differ = [f"{f.name} {getattr(config, f.name)!r} vs {getattr(found, f.name)!r}"
              for f in dataclasses.fields(config) if f.name not in NON_ARCHITECTURE_FIELDS
              and getattr(config, f.name) != getattr(found, f.name)]
    if differ:
        raise config_lib.ConfigError(f"the text encoder config does not match "
                                     f"{folder}/config.json (config vs file): "
                                     + "; ".join(differ))


# ---- Tokenizer ---------------------------------------------------------------------------------


def local_folder(path) -> pathlib.Path:
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

        self.path = local_folder(path)
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


def check_tokenizer(config: TextEncoderConfig, tokenizer: Tokenizer) -> None:
    """Refuses a tokenizer that the encoder cannot read: an id beyond the vocabulary embeds
    as NaN, another padding id breaks RoBERTa's positions, and a longer input has no
    position embedding."""
    where = tokenizer.path
    if tokenizer.vocab_size > config.vocab_size:
        raise config_lib.ConfigError(f"{where}: tokenizer has {tokenizer.vocab_size} tokens "
                                     f"but the model's vocabulary is {config.vocab_size}")
    if tokenizer.pad_token_id != config.pad_token_id:
        raise config_lib.ConfigError(f"{where}: tokenizer pads with id "
                                     f"{tokenizer.pad_token_id} but the model's pad_token_id "
                                     f"is {config.pad_token_id}")
    if tokenizer.max_length > config.max_tokens:
        raise config_lib.ConfigError(f"max_length {tokenizer.max_length} exceeds the model's "
                                     f"{config.max_tokens} positions ({where})")


def from_pretrained(path, *, dtype=jnp.float32, max_length: int = 32,
                    config: TextEncoderConfig | None = None,
                    kernels: kernels_lib.Kernels = kernels_lib.REFERENCE,
                    ) -> tuple[TextEncoder, Tokenizer]:
    """(encoder, tokenizer) from a local Hugging Face folder; the encoder is in inference
    mode (`.eval()`: no dropout), as transformers' `from_pretrained` and
    `panns.from_checkpoint` return theirs.

    `config` (e.g. a preset) is checked against the folder's config.json; its training
    settings (dropout rates) win. `kernels` (atjax.kernels) as for `TextEncoder`.
    For fine-tuning call `encoder.train()`; dropout then draws from a stream seeded 0:
    reseed with `nnx.reseed(encoder, dropout=seed)`.
    """
    folder = local_folder(path)
    if config is None:
        config = TextEncoderConfig.from_hf_config(folder)
    else:
        check_folder_config(config, folder)
    tokenizer = Tokenizer(folder, max_length)
    check_tokenizer(config, tokenizer)
    # The strict load overwrites every param, so skip the random init (17 s for RoBERTa-Large
    # on two CPU cores): build the structure abstractly, then give dropout real keys.
    encoder = nnx.eval_shape(lambda: TextEncoder(
        config, dtype=dtype, kernels=kernels, rngs=nnx.Rngs(params=0, dropout=0)))
    nnx.reseed(encoder, dropout=0)
    load_weights(encoder, folder)
    encoder.eval()
    return encoder, tokenizer
