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
from atjax import frontend
from atjax import heads
from atjax import kernels as kernels_lib
from atjax.encoders import panns
from atjax.encoders import text as text_lib

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
    # A network field left None keeps the architecture's value.
    network = {k: v for k, v in dict(a.network).items() if v is not None}
    return factories[a.arch](frontend=fe, **network)


def _network_defaults() -> dict:
    """Every ResNetConfig field `model.audio.network` can override, with the value all
    architectures share, or None (the architecture's own) where they differ (blocks, block).
    The frontend is a setting of `model.audio` itself."""
    archs = [panns.resnet22(), panns.resnet38(), panns.resnet54()]
    fields = {}
    for f in dataclasses.fields(panns.ResNetConfig):
        if f.name == "frontend":
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


# The settings that `model.kernels` replaced (config path -> op of atjax.kernels). A
# config written before (a run's config.json) has no `kernels` and carries them, with the
# GPU kernels that were then always on: it is read as "fast" with these as overrides, so
# an older run resumes computing what it computed. A config with both is refused.
_FOLDED = {"dropout_mask_bits": "dropout_mask_bits", "audio.stem_conv": "tap_conv",
           "audio.batchnorm_one_pass": "batchnorm_one_pass",
           "text.remat_activation": "remat_activation", "text.attention_impl": "attention"}
# The same for settings of the whole run (outside `config.model`).
_FOLDED_RUN = {"compute_weight_copies": "weight_copies", "rng_impl": "rng_impl"}
# What a config without `kernels` computed where it did not set the folded fields.
_BEFORE_KERNELS = dataclasses.replace(
    kernels_lib.FAST, tap_conv=False, dropout_mask_bits=32, attention="xla",
    weight_copies=False)


def _folded(config: ml_collections.ConfigDict, fields: dict[str, str], prefix: str) -> dict:
    found = {}
    for path, op in fields.items():
        node = config
        *parents, leaf = path.split(".")
        for name in parents:
            node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
        if isinstance(node, ml_collections.ConfigDict) and node.get(leaf) is not None:
            value = node[leaf]  # (None was "automatic": what "fast" does)
            found[f"{prefix}{path}"] = (op, value == "taps" if op == "tap_conv" else value)
    return found


def kernels(config: ml_collections.ConfigDict,
            run: ml_collections.ConfigDict | None = None) -> kernels_lib.Kernels:
    """How the ops of the model of `config.model` are computed: `model.kernels` with
    `model.kernel_overrides` (atjax.kernels). `run`, the whole experiment config, for the
    run settings an older config carries (see _FOLDED)."""
    folded = _folded(config, _FOLDED, "model.")
    if run is not None:
        folded.update(_folded(run, _FOLDED_RUN, ""))
    if "kernels" in config and folded:
        path, (op, _) = next(iter(folded.items()))
        raise config_lib.ConfigError(
            f"{path} is now model.kernel_overrides.{op} (one of the ops model.kernels "
            "chooses); set that instead")
    try:
        if "kernels" not in config:  # a config written before the setting
            return dataclasses.replace(_BEFORE_KERNELS, **dict(folded.values()))
        overrides = {op: value for op, value in dict(config.get("kernel_overrides") or {})
                     .items() if value is not None}
        return kernels_lib.choose(config.kernels, overrides)
    except ValueError as e:
        raise config_lib.ConfigError(str(e) if str(e).startswith("model.")
                                     else f"model.kernel_overrides: {e}") from None


class DualEncoder(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        choice = kernels(config)
        self.head_kind = config.head
        self.freeze_text = bool(config.text.freeze)
        self.text_head_dtype = dtype
        self.chunk_samples = chunk_samples(config)
        self.audio_encoder = panns.ResNet(audio_config(config), dtype=dtype, kernels=choice,
                                          rngs=rngs)
        self.text_encoder = text_lib.TextEncoder(text_config(config), dtype=dtype,
                                                 kernels=choice, rngs=rngs)
        self.audio_head = heads.make_head(
            config.head, self.audio_encoder.output_dim, config.embed_dim,
            dropout_rate=config.head_dropout, dtype=dtype,
            mask_bits=choice.dropout_mask_bits, rngs=rngs)
        self.text_head = heads.make_head(
            config.head, self.text_encoder.output_dim, config.embed_dim,
            dropout_rate=config.head_dropout, dtype=dtype,
            mask_bits=choice.dropout_mask_bits, rngs=rngs)
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

    def encode_text(self, input_ids: jax.Array | None, attention_mask: jax.Array,
                    text_features: jax.Array | None = None) -> jax.Array:
        """Token ids (or, for a frozen encoder, its token features `[B, L, H]` computed
        beforehand: atjax.text_features) -> `[B, embed_dim]` (unnormalised)."""
        if text_features is not None:
            if not self.freeze_text:
                raise ValueError("text_features replace the text encoder only when it is "
                                 "frozen (model.text.freeze)")
            hidden = text_features.astype(self.text_head_dtype)
        else:
            with jax.named_scope("text_encoder"):
                hidden = self.text_encoder(input_ids, attention_mask)
        if self.freeze_text:
            # No gradient flows into a frozen encoder, so XLA drops its backward pass.
            hidden = jax.lax.stop_gradient(hidden)
        with jax.named_scope("text_head"):
            if self.text_head.pooled:
                return self.text_head(hidden[:, 0])  # [CLS] / <s>
            return self.text_head(hidden, attention_mask.astype(bool))

    def __call__(self, audio, input_ids, attention_mask,
                 text_features=None) -> tuple[jax.Array, jax.Array]:
        return (self.encode_audio(audio),
                self.encode_text(input_ids, attention_mask, text_features))


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
    cache = config.text.get("feature_cache", 0)
    if isinstance(cache, bool) or not isinstance(cache, int) or cache < 0:
        raise config_lib.ConfigError(f"model.text.feature_cache must be an integer >= 0, "
                                     f"got {cache!r}")
    if cache and not config.text.freeze:
        raise config_lib.ConfigError("model.text.feature_cache needs model.text.freeze=True: "
                                     "a text encoder that trains has no fixed features")
    kernels(config)
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
    # How the ops are computed (atjax.kernels, docs/kernels.md): "reference" (plain Flax/XLA
    # ops) or "fast" (the kernels written for GPUs: the same functions, 16-bit dropout
    # masks). kernel_overrides sets single ops against it; None follows the setting.
    c.kernels = "reference"
    c.kernel_overrides = ml_collections.ConfigDict({op: None for op in kernels_lib.OPS})
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
    c.text = ml_collections.ConfigDict()
    c.text.encoder = "roberta-large"   # a Table 1 preset, or "auto" for path/config.json
    c.text.path = ""                   # local Hugging Face folder (tokenizer, config, weights)
    c.text.pretrained = True           # load the folder's weights (False: random init)
    c.text.max_length = 32
    c.text.freeze = False              # the paper fine-tunes the text encoder
    # With freeze: keep the frozen encoder's token features of up to this many distinct
    # captions on the host and train on them, instead of running the encoder in every step
    # (atjax.text_features; eval-mode features, no dropout). 0: run it in every step.
    c.text.feature_cache = 0
    c.text.overrides = ml_collections.ConfigDict(
        dict(num_layers=0, hidden_size=0, num_heads=0, intermediate_size=0))  # 0 = keep
    return c
