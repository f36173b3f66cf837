"""The dual encoder: audio encoder + Agg/Proj head, text encoder + Agg/Proj head.

Built from the `config.model` block of an experiment config. Construction never touches
files, so `nnx.eval_shape(lambda: build(config))` gives the abstract model for restoring
checkpoints; `load_pretrained` then fills the encoders from the released weights.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from atjax import config as config_lib
from atjax import dropout as dropout_lib
from atjax import heads
from atjax.encoders import panns
from atjax.encoders import text as text_lib
from atjax import frontend

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: temperature never below 0.01


def compute_dtype(config: ml_collections.ConfigDict):
    if config.compute_dtype not in DTYPES:
        raise ValueError(f"model.compute_dtype must be one of {sorted(DTYPES)}, "
                         f"got {config.compute_dtype!r}")
    return DTYPES[config.compute_dtype]


def audio_config(config: ml_collections.ConfigDict) -> panns.ResNetConfig:
    """ResNetConfig from `config.audio`: an architecture name plus field overrides."""
    a = config.audio
    factories = {"resnet22": panns.resnet22, "resnet38": panns.resnet38,
                 "resnet54": panns.resnet54}
    if a.arch not in factories:
        raise ValueError(f"model.audio.arch must be one of {sorted(factories)}, got {a.arch!r}")
    fe = frontend.FrontendConfig(**dict(a.frontend))
    # Configs written before these settings existed lack them: their defaults apply.
    # A network field left None keeps the architecture's value.
    network = {k: v for k, v in dict(a.network).items() if v is not None}
    fields = {"batchnorm_one_pass": a.get("batchnorm_one_pass"),
              "stem_conv": a.get("stem_conv", "conv"), **network}
    return factories[a.arch](frontend=fe, **fields)


def _network_defaults() -> dict:
    """Every ResNetConfig field `model.audio.network` can override, with the value all
    architectures share, or None (the architecture's own) where they differ (blocks, block).
    The frontend, batchnorm_one_pass and stem_conv are settings of `model.audio` itself."""
    archs = [panns.resnet22(), panns.resnet38(), panns.resnet54()]
    fields = {}
    for f in dataclasses.fields(panns.ResNetConfig):
        if f.name in ("frontend", "batchnorm_one_pass", "stem_conv"):
            continue
        values = {getattr(arch, f.name) for arch in archs}
        fields[f.name] = values.pop() if len(values) == 1 else None
    return fields


def text_config(config: ml_collections.ConfigDict) -> text_lib.TextEncoderConfig:
    """TextEncoderConfig: a Table 1 preset, or the local folder's config.json ("auto")."""
    t = config.text
    if t.encoder == "auto":
        if not t.path:
            raise ValueError("model.text.encoder='auto' reads config.json from model.text.path, "
                             "which is empty")
        base = text_lib.TextEncoderConfig.from_hf_config(t.path)
    else:
        base = text_lib.preset(t.encoder)
    overrides = {k: v for k, v in dict(t.overrides).items() if v}
    # Configs written before this setting lack it: None (automatic) applies.
    overrides["remat_activation"] = t.get("remat_activation")
    overrides["attention_impl"] = t.get("attention_impl", "xla")
    return dataclasses.replace(base, **overrides)


def chunk_samples(config: ml_collections.ConfigDict) -> int | None:
    """Samples per chunk for the Transformer head's audio sequence (None for the MLP head)."""
    if config.head != "transformer":
        return None
    return int(round(config.chunk_seconds * config.audio.frontend.sample_rate))


def clip_samples(config: ml_collections.ConfigDict) -> int:
    """Training clip length, rounded down to a whole number of chunks when chunking."""
    n = int(round(config.clip_seconds * config.audio.frontend.sample_rate))
    c = chunk_samples(config)
    if c is not None:
        if n < c:
            raise ValueError(f"model.clip_seconds={config.clip_seconds} is shorter than one "
                             f"chunk (model.chunk_seconds={config.chunk_seconds})")
        n = (n // c) * c
    return n


# Dropout sites that keep 32-bit masks under `dropout_mask_bits=16`: the text encoder's
# attention probabilities. Their float32 softmax is fused with the masking on GPUs, and a
# 16-bit mask there made XLA split that fusion and write the exp out: compiled for an H200
# (`python -m atjax.bench aot --target h200 --config.model.dropout_mask_bits=16`), the
# paper's step had 2,472 kernels and 83.38 GB of traffic with every site at 16 bits, and
# 2,425 and 83.02 with these at 32 (2,426 and 83.02 with every site at 32), while these
# masks are small ([64, 16, 32, 32], 0.11 ms of threefry in the 56115ca profile).
_FULL_MASK_SITES = ("attention_dropout",)


class DualEncoder(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        # Configs written before dropout_mask_bits existed lack it: 32 is nnx.Dropout.
        mask_bits = dropout_lib.check_mask_bits(config.get("dropout_mask_bits", 32))
        self.head_kind = config.head
        self.freeze_text = bool(config.text.freeze)
        self.chunk_samples = chunk_samples(config)
        self.audio_encoder = panns.ResNet(audio_config(config), dtype=dtype, rngs=rngs)
        self.text_encoder = text_lib.TextEncoder(text_config(config), dtype=dtype, rngs=rngs)
        self.audio_head = heads.make_head(
            config.head, self.audio_encoder.output_dim, config.embed_dim,
            dropout_rate=config.head_dropout, dtype=dtype, rngs=rngs)
        self.text_head = heads.make_head(
            config.head, self.text_encoder.output_dim, config.embed_dim,
            dropout_rate=config.head_dropout, dtype=dtype, rngs=rngs)
        for path, module in self.iter_modules():
            if isinstance(module, dropout_lib.Dropout) and path[-1] not in _FULL_MASK_SITES:
                module.mask_bits = mask_bits
        init_scale = jnp.asarray(math.log(1.0 / config.temperature), jnp.float32)
        # A fixed temperature is a non-Param variable, so the optimizer never sees it.
        param_type = nnx.Param if config.learn_temperature else nnx.Variable
        self.log_logit_scale = param_type(init_scale)

    @property
    def logit_scale(self) -> jax.Array:
        return jnp.minimum(jnp.exp(self.log_logit_scale[...]), MAX_LOGIT_SCALE)

    def encode_audio(self, waveform: jax.Array) -> jax.Array:
        """`[B, N]` float waveform at the model's rate -> `[B, embed_dim]` (unnormalised)."""
        # Named scopes label the compiled ops in profiles (atjax.bench profile).
        if self.chunk_samples is None:
            with jax.named_scope("audio_encoder"):
                embedding = self.audio_encoder(waveform)["embedding"]
            with jax.named_scope("audio_head"):
                return self.audio_head(embedding)
        n = waveform.shape[1]
        if n % self.chunk_samples:
            # Pad the last partial chunk with silence rather than dropping audio.
            pad = self.chunk_samples - n % self.chunk_samples
            waveform = jnp.pad(waveform, ((0, 0), (0, pad)))
        with jax.named_scope("audio_encoder"):
            chunks = self.audio_encoder(waveform, chunk_samples=self.chunk_samples)
        # A chunk of exact zeros is the padding that fits a short clip to the training
        # length (or fills its last chunk): the head skips it, as the text head skips pad
        # tokens, so a clip's representation does not depend on how far it was padded.
        batch, count = chunks["chunk_embeddings"].shape[:2]
        audible = jnp.any(waveform.reshape(batch, count, self.chunk_samples) != 0, axis=-1)
        with jax.named_scope("audio_head"):
            return self.audio_head(chunks["chunk_embeddings"], audible)

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        with jax.named_scope("text_encoder"):
            hidden = self.text_encoder(input_ids, attention_mask)
        if self.freeze_text:
            # No gradient flows into a frozen encoder, so XLA drops its backward pass.
            hidden = jax.lax.stop_gradient(hidden)
        with jax.named_scope("text_head"):
            if self.text_head.pooled:
                return self.text_head(hidden[:, 0])  # [CLS] / <s>
            return self.text_head(hidden, attention_mask.astype(bool))

    def __call__(self, audio, input_ids, attention_mask) -> tuple[jax.Array, jax.Array]:
        return self.encode_audio(audio), self.encode_text(input_ids, attention_mask)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise config_lib.ConfigError(f"{name} must be a positive integer, got {value!r}")


def _positive_number(name: str, value) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise config_lib.ConfigError(f"{name} must be a positive number, got {value!r}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses a `config.model` block the network cannot be built from, naming the field
    (ConfigError), before anything is built: a size of 0 would otherwise surface as a
    division by zero inside JAX's initialisers."""
    if config.head not in heads.HEADS:
        raise config_lib.ConfigError(f"model.head must be one of {sorted(heads.HEADS)}, "
                                     f"got {config.head!r}")
    _positive_int("model.embed_dim", config.embed_dim)
    _positive_int("model.text.max_length", config.text.max_length)
    for name in ("temperature", "clip_seconds", "chunk_seconds"):
        if config.get(name) is not None:
            _positive_number(f"model.{name}", config[name])
    rate = config.head_dropout
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise config_lib.ConfigError(f"model.head_dropout must be in [0, 1), got {rate!r}")
    for name, value in dict(config.text.get("overrides") or {}).items():
        # 0 keeps the folder's or preset's value.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise config_lib.ConfigError(f"model.text.overrides.{name} must be a positive "
                                         f"integer, or 0 to keep the model's, got {value!r}")
    bits = config.get("dropout_mask_bits", 32)
    if isinstance(bits, bool) or bits not in dropout_lib.MASK_BITS:
        raise config_lib.ConfigError(f"model.dropout_mask_bits must be one of "
                                     f"{dropout_lib.MASK_BITS}, got {bits!r}")
    try:
        compute_dtype(config)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    try:
        audio_config(config)
        clip_samples(config)
    except ValueError as e:  # the ResNet and frontend configs check their own fields
        raise config_lib.ConfigError(str(e) if str(e).startswith("model.")
                                     else f"model.audio: {e}") from None
    try:
        text_config(config)
    except ValueError as e:
        raise config_lib.ConfigError(str(e) if str(e).startswith("model.")
                                     else f"model.text: {e}") from None


def build(config: ml_collections.ConfigDict, seed: int = 0) -> DualEncoder:
    """A randomly initialised model (no file access beyond a text folder's config.json);
    `check_config` first, so a bad setting is named instead of failing inside JAX."""
    check_config(config)
    return DualEncoder(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1, augment=seed + 2))


def load_pretrained(model: DualEncoder, config: ml_collections.ConfigDict) -> None:
    """Fills the encoders with released weights where the config names them."""
    if config.audio.checkpoint:
        pretrained = panns.from_checkpoint(config.audio.checkpoint, audio_config(config),
                                           dtype=compute_dtype(config))
        nnx.update(model.audio_encoder, nnx.state(pretrained, nnx.Param, nnx.BatchStat))
    if config.text.path and config.text.pretrained:
        # A preset or overrides must describe the folder's model: equal shapes alone would
        # let another activation or epsilon through.
        text_lib.check_folder_config(text_config(config), config.text.path)
        text_lib.load_weights(model.text_encoder, config.text.path)


def make_tokenizer(config: ml_collections.ConfigDict) -> text_lib.Tokenizer:
    if not config.text.path:
        raise ValueError("model.text.path must name a local Hugging Face folder holding the "
                         "tokenizer files (and config/weights when pretrained)")
    tokenizer = text_lib.Tokenizer(config.text.path, max_length=config.text.max_length)
    text_lib.check_tokenizer(text_config(config), tokenizer)
    return tokenizer


def default_config() -> ml_collections.ConfigDict:
    """The paper's model: ResNet38 (PANNs weights) + RoBERTa-Large, MLP heads to 1024-d."""
    c = ml_collections.ConfigDict()
    c.head = "mlp"                 # "mlp" (baseline) | "transformer" (the paper's proposal)
    c.embed_dim = 1024
    c.head_dropout = 0.1
    # Random bits per dropout decision: 32 is nnx.Dropout; 16 quarters the PRNG hashing
    # (rates then quantised to 2**-16; atjax.dropout) at every site but the text
    # attention probabilities, which keep 32 (see _FULL_MASK_SITES).
    c.dropout_mask_bits = 32
    c.compute_dtype = "float32"    # "float32" | "bfloat16"; parameters stay float32
    c.temperature = 0.07
    c.learn_temperature = True
    c.clip_seconds = 10.0
    c.chunk_seconds = 1.0          # the Transformer head's audio step (1 s in the paper)
    c.audio = ml_collections.ConfigDict()
    c.audio.arch = "resnet38"
    c.audio.checkpoint = ""        # PANNs .pth or converted orbax dir; "" = random init
    c.audio.frontend = ml_collections.ConfigDict(dataclasses.asdict(frontend.FrontendConfig()))
    # Field overrides of the ResNet family (e.g. widths, blocks, embed_dim) for small models:
    # every field is present, so each can be overridden on its own; None keeps the arch's.
    c.audio.network = ml_collections.ConfigDict(_network_defaults())
    # BatchNorm statistics in one pass over the activations (True) or two (False); None:
    # one for bfloat16 compute, two for float32 (atjax.encoders.panns.BatchNorm).
    c.audio.batchnorm_one_pass = None
    # The first convolution (1 -> 64 channels at full resolution): "conv" (cuDNN on GPUs) or
    # "taps", the same function as elementwise taps and a matmul (atjax.tap_conv).
    c.audio.stem_conv = "conv"
    c.text = ml_collections.ConfigDict()
    c.text.encoder = "roberta-large"   # a Table 1 preset, or "auto" for path/config.json
    c.text.path = ""                   # local Hugging Face folder (tokenizer, config, weights)
    c.text.pretrained = True           # load the folder's weights (False: random init)
    c.text.max_length = 32
    c.text.freeze = False              # the paper fine-tunes the text encoder
    # Recompute the MLP activation in the backward pass instead of keeping its intermediates
    # (less memory and traffic): None is on for bfloat16 compute, off for float32.
    c.text.remat_activation = None
    # The attention core: "xla" (einsums), "pallas" (one kernel per direction on CUDA GPUs)
    # or "auto" (the kernel where it applies); the same function (atjax.attention).
    c.text.attention_impl = "xla"
    c.text.overrides = ml_collections.ConfigDict(
        dict(num_layers=0, hidden_size=0, num_heads=0, intermediate_size=0))  # 0 = keep
    return c
