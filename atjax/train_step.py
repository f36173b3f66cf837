"""The training step: a pure function of the train state and one global batch.

The model is split once (`nnx.split`) into a static graph definition and array state; the
jitted step merges them, so no Python-side graph traversal slows the compiled step. The
state is held as plain nested dicts of arrays (`State.to_pure_dict()`), not `nnx.State`:
JAX flattens dicts in C++, while `nnx.State` flattens (and rebuilds the returned state)
in Python, host time on the critical path of every step (docs/kernels.md).

Dropout and SpecAugment keys are derived from (seed, step), never carried in the state: a
resumed run draws exactly the randomness an uninterrupted run would have.

With the `weight_copies` kernel (atjax.kernels; bfloat16 compute), the state also carries
compute-dtype copies of the weight matrices and conv kernels, written by the optimizer step
beside the float32 masters (`weight_copies`). The forward pass reads them instead of
casting each float32 kernel at the start of every step, where writing the copies inside
Adam's kernels adds a 2-byte store per weight (docs/kernels.md). The gradients are the
same: the cast's gradient is the bfloat16 gradient converted to float32, as here. Copies
are derived from the masters and never checkpointed.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from atjax import kernels as kernels_lib
from atjax import loss as loss_lib
from atjax import model as model_lib

PyTree = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict  # nested dicts of float32 arrays, keyed like the module tree
    batch_stats: dict
    opt_state: PyTree
    # `weight_copies(params, dtype)` or None: read by the forward pass, never checkpointed.
    weight_copies: dict | None = None


def copies_dtype(config: ml_collections.ConfigDict):
    """The dtype of the weight copies a run keeps (the `weight_copies` kernel under a 16-bit
    `model.compute_dtype`), or None: with float32 compute there is nothing to save."""
    if not model_lib.kernels(config.model, config).weight_copies:
        return None
    dtype = jnp.dtype(model_lib.compute_dtype(config.model))
    return None if dtype == jnp.float32 else dtype


def weight_copies(params: PyTree, dtype) -> dict | None:
    """`params` with every weight matrix and conv kernel (a "kernel" of 2+ dimensions) cast
    to `dtype` and None elsewhere; None if `dtype` is None.

    Only kernels: every module casts its kernel whole to the compute dtype before use, so a
    copy changes nothing. Embedding tables are gathered first (a bfloat16 table would sum
    repeated tokens' gradients in bfloat16), and biases and norm scales stay float32.
    """
    if dtype is None:
        return None

    def copy(path, x):
        name = getattr(path[-1], "key", path[-1])
        return x.astype(dtype) if name == "kernel" and x.ndim >= 2 else None

    return jax.tree_util.tree_map_with_path(copy, params)


def _model_params(params: PyTree, copies: PyTree | None) -> PyTree:
    """The parameters the forward pass reads: each weight's copy where there is one."""
    if copies is None:
        return params
    return jax.tree.map(lambda p, c: p if c is None else c, params, copies,
                        is_leaf=lambda x: x is None)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """The paper's StepLR: lr * gamma ** floor(step / decay_every) (+ optional warmup)."""
    opt = config.optimizer
    schedule = optax.exponential_decay(
        init_value=opt.learning_rate, transition_steps=max(1, opt.decay_every_steps),
        decay_rate=opt.decay_rate, staircase=True)
    if opt.warmup_steps:
        warmup = optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [opt.warmup_steps])
    return schedule


def _param_labels(params: PyTree, freeze_text: bool) -> PyTree:
    """"text" / "frozen" for the text encoder's parameters, "trained" for the rest."""
    def label(path, _):
        if path and getattr(path[0], "key", path[0]) == "text_encoder":
            return "frozen" if freeze_text else "text"
        return "trained"
    return jax.tree_util.tree_map_with_path(label, params)


def _adam(config: ml_collections.ConfigDict, scale: float) -> optax.GradientTransformation:
    opt = config.optimizer
    schedule = learning_rate_schedule(config)
    lr = schedule if scale == 1.0 else (lambda step: scale * schedule(step))
    if opt.name == "adam":
        return optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    if opt.name == "adamw":
        return optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay)
    raise ValueError(f"optimizer.name must be 'adam' or 'adamw', got {opt.name!r}")


def make_optimizer(config: ml_collections.ConfigDict, params: PyTree
                   ) -> optax.GradientTransformation:
    """Adam(W) with the StepLR schedule; the text encoder can be frozen
    (`model.text.freeze`) or trained at a scaled rate (`optimizer.text_learning_rate_scale`)."""
    opt = config.optimizer
    text_scale = float(opt.get("text_learning_rate_scale", 1.0))
    tx = optax.multi_transform(
        {"trained": _adam(config, 1.0), "text": _adam(config, text_scale),
         "frozen": optax.set_to_zero()},
        _param_labels(params, bool(config.model.text.freeze)))
    if opt.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx


def split_model(model: model_lib.DualEncoder):
    """(train graphdef, eval graphdef, params, batch_stats, rest), the last three as plain
    nested dicts of arrays (`nnx.merge` takes them as they are).

    `rest` holds the RNG streams and non-trainable variables (a fixed temperature); it is
    constant through training.
    """
    model.train()
    train_def, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    model.eval()
    eval_def = nnx.graphdef(model)
    model.train()
    return (train_def, eval_def, params.to_pure_dict(), batch_stats.to_pure_dict(),
            rest.to_pure_dict())


# JAX's PRNG implementations, for the `rng_impl` kernel (atjax.kernels). threefry2x32
# (JAX's default) gives the same bits on any sharding and on any backend; rbg and
# unsafe_rbg use XLA's RngBitGenerator, far fewer integer operations per random bit on GPUs
# and TPUs, but their bits may change with the XLA version, and unsafe_rbg's key
# derivation is weaker.
RNG_IMPLS = kernels_lib.RNG_IMPLS


def base_key(config: ml_collections.ConfigDict) -> jax.Array:
    """The run's root key: `config.seed` under the `rng_impl` kernel (threefry2x32 unless
    overridden)."""
    impl = model_lib.kernels(config.model, config).rng_impl
    return jax.random.key(config.seed, impl=impl)


def step_keys(base_key: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    key = jax.random.fold_in(base_key, step)
    dropout, augment = jax.random.split(key)
    return {"dropout": dropout, "augment": augment}


def reseed(model: nnx.Module, **stream_keys: jax.Array) -> None:
    """`nnx.reseed(model, **stream_keys)`, the same keys bit for bit, drawn in one op.

    nnx.reseed gives the i-th stream of a tag (in graph order) the key
    fold_in(stream_keys[tag], i), one scalar fold_in after another; inside the jitted step
    XLA:GPU left the last add of each key as a one-element kernel of its own. Here the keys
    are drawn as one vector of fold_ins (docs/kernels.md).
    """
    streams: dict[str, list] = {tag: [] for tag in stream_keys}
    for path, stream in nnx.iter_graph(model):
        if isinstance(stream, nnx.RngStream) and stream.key.tag in streams:
            if stream.key.shape != ():  # as nnx.reseed's default policy
                raise ValueError(f"cannot reseed the stream at {path!r}: its key has shape "
                                 f"{stream.key.shape}, not a scalar key")
            streams[stream.key.tag].append(stream)
    for tag, found in streams.items():
        if not found:
            continue
        key = nnx.Rngs(**{tag: stream_keys[tag]})[tag].key[...]  # a seed becomes a key
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
            jnp.arange(len(found), dtype=jnp.uint32))
        for i, stream in enumerate(found):
            stream.key.set_value(keys[i])
            stream.count.set_value(jnp.zeros((), jnp.uint32))


# Leaves smaller than this enter `global_norm` as one concatenation.
SMALL_LEAF = 1 << 16


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves together (optax.global_norm), computed in float32.

    Written for the GPU's kernels, with the sums in another order than optax's:
      - optax sums each leaf's squares separately: one reduction kernel per leaf, ~5 us
        even for a 64-element BatchNorm bias, and ResNet38 + RoBERTa-Large has ~270 small
        leaves. Small leaves are concatenated first (a few MB) and summed as one.
      - A large leaf's squares are summed along its last axis only (XLA fuses that into
        the optimizer's kernel for the leaf, as it did the first stage of a whole-leaf
        sum), and all these row sums are added up in one final reduction. XLA would
        otherwise split the sum of a concatenation into one sum per part, so the
        concatenation is read through `lax.optimization_barrier`. Whole-leaf sums took a
        second kernel per leaf on GPUs, of a few thousand partial sums (docs/kernels.md).
    """
    leaves = jax.tree.leaves(tree)
    parts = []
    for x in leaves:
        if x.size >= SMALL_LEAF:
            rows = x.reshape(-1, x.shape[-1])
            parts.append(jnp.sum(jnp.square(rows.astype(jnp.float32)), axis=1))
    small = [x.astype(jnp.float32).ravel() for x in leaves if x.size < SMALL_LEAF]
    if small:
        parts.append(jnp.square(jnp.concatenate(small)))
    if not parts:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(jnp.sum(jax.lax.optimization_barrier(jnp.concatenate(parts))))


def train_step(state: TrainState, batch: dict[str, jax.Array], rest: PyTree,
               base_key: jax.Array, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats, rest, copy=True)
        reseed(model, **step_keys(base_key, state.step))
        # A frozen text encoder's features may come with the batch (atjax.text_features).
        audio, text = model(batch["audio"], batch.get("input_ids"), batch["attention_mask"],
                            batch.get("text_features"))
        with jax.named_scope("loss"):  # scopes label ops in profiles (atjax.bench profile)
            loss, metrics = loss_lib.info_nce(audio, text, model.logit_scale)
        return loss, (metrics, nnx.state(model, nnx.BatchStat).to_pure_dict())

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(
        _model_params(state.params, state.weight_copies))
    with jax.named_scope("optimizer"):
        # Of the gradients as autodiff gives them (a copy's in bfloat16, exactly its float32
        # value), read by the same kernels as Adam's update of each leaf.
        metrics["grad_norm"] = global_norm(grads)
        # A copy's gradient is the compute dtype's; the masters' are float32 (exact).
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        copies = state.weight_copies
        if copies is not None:
            copies = weight_copies(params, jax.tree.leaves(copies)[0].dtype)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state, weight_copies=copies)
    return new_state, metrics


def jit_train_step(graphdef, tx, state_sharding, batch_sharding, replicated):
    """The compiled step: state replicated and donated, batch sharded along "data"."""
    return jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx),
        in_shardings=(state_sharding, batch_sharding, replicated, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,))


def init_state(params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation,
               copies_dtype=None) -> TrainState:
    """Step 0's state; `copies_dtype` (see `copies_dtype(config)`) adds weight copies."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params),
                      weight_copies=weight_copies(params, copies_dtype))


def without_copies(state: TrainState) -> TrainState:
    """The state as checkpoints hold it: the copies are derived from the masters."""
    return state.replace(weight_copies=None)


def with_copies(state: TrainState, dtype) -> TrainState:
    """A restored state with its copies derived again (none if `dtype` is None)."""
    return state.replace(weight_copies=weight_copies(state.params, dtype))
