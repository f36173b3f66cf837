"""Self-attention over short sequences as one GPU kernel per direction.

`attention(qkv, key_bias, keep, ...)` is the text encoder's attention core, from the
query/key/value projection's output to the context the output projection reads:

    logits  = q k^T / sqrt(head_dim) + key_bias          (float32)
    probs   = softmax(logits); dropped where `keep` is False, the rest / keep_prob
    context = probs (in the compute dtype) @ v

Why a kernel: captions are ~32 tokens. For RoBERTa-Large at batch 64, XLA:GPU runs this
core, per layer and direction, as two batched 32 x 32 matmuls, a softmax in two kernels
and layout shuffles that move the heads between the projection's [batch, token, head,
dim] layout and the [batch, head, token, dim] one its batched matmuls take, a few
percent of the paper's step on a GPU (docs/kernels.md). Here one program per (sequence,
head) reads its query, key and value tiles straight from the projection's output, keeps
the 32 x 32 logits in registers and writes its context where the output projection reads
it; the backward program recomputes the softmax instead of storing it, and writes the
three gradients into one array in the projection's layout.

`impl` (the `attention` kernel of atjax.kernels) picks the form: "xla" is `reference`,
the einsums, on any backend; "pallas" is the kernel (Pallas on Triton: CUDA GPUs, token
counts and head sizes that are powers of two from 16 to 64); "auto" is the kernel on
CUDA GPUs where it applies and the reference elsewhere (`lax.platform_dependent`).
`interpret` runs the kernel in Pallas's interpreter, which is how the tests check it on
a CPU. Pallas's Triton backend is deprecated as of jax 0.11 in favour of Mosaic GPU:
where a JAX lacks it, "auto" takes the reference and "pallas" says so. Under a jit whose
batch is sharded over devices, each device runs the kernel on its own sequences
(`_batch_partitioned`).

The dropout mask comes from the caller (`atjax.kernels.dropout.Dropout.keep_mask`), so
both forms drop exactly the elements that the encoder's Dropout module drops
(`tests/test_attention.py`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLS = ("xla", "pallas", "auto")


def reference(qkv: jax.Array, key_bias: jax.Array, keep: jax.Array | None, *,
              num_heads: int, keep_prob: float = 1.0) -> jax.Array:
    """The attention core as plain XLA ops (the text encoder's einsums).

    qkv: [batch, tokens, 3 * num_heads, head_dim], queries then keys then values;
    key_bias: [batch, tokens] float32, added to every query's logits (0 or a large
    negative for padding); keep: [batch, num_heads, tokens, tokens] bool or None.
    Returns the context, [batch, tokens, num_heads, head_dim], in qkv's dtype.
    """
    q, k, v = jnp.split(qkv, 3, axis=2)
    head_dim = qkv.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(head_dim) + key_bias[:, None, None, :]
    probs = jax.nn.softmax(logits, axis=-1)
    if keep is not None:
        probs = lax.select(keep, probs / keep_prob, jnp.zeros_like(probs))
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(qkv.dtype), v)


def _probs(q, k, bias, keep, head_dim, keep_prob):
    """(softmax probabilities, after dropout) for one (sequence, head) tile, float32."""
    logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)
    logits = logits / jnp.float32(math.sqrt(head_dim)) + bias[None, :]
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    probs = unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)
    if keep is None:
        return probs, probs
    dropped = jnp.where(keep != 0, probs / jnp.float32(keep_prob), jnp.float32(0))
    return probs, dropped


def _forward_kernel(*refs, num_heads, head_dim, keep_prob, has_keep):
    if has_keep:
        qkv_ref, bias_ref, keep_ref, out_ref = refs
    else:
        (qkv_ref, bias_ref, out_ref), keep_ref = refs, None
    from jax.experimental import pallas as pl

    b, h = pl.program_id(0), pl.program_id(1)
    q = qkv_ref[b, :, h, :]
    k = qkv_ref[b, :, num_heads + h, :]
    v = qkv_ref[b, :, 2 * num_heads + h, :]
    keep = None if keep_ref is None else keep_ref[b, h, :, :]
    _, dropped = _probs(q, k, bias_ref[b, :], keep, head_dim, keep_prob)
    context = jnp.dot(dropped.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out_ref[b, :, h, :] = context.astype(out_ref.dtype)


def _backward_kernel(*refs, num_heads, head_dim, keep_prob, has_keep):
    if has_keep:
        qkv_ref, bias_ref, keep_ref, g_ref, dqkv_ref = refs
    else:
        (qkv_ref, bias_ref, g_ref, dqkv_ref), keep_ref = refs, None
    from jax.experimental import pallas as pl

    b, h = pl.program_id(0), pl.program_id(1)
    q = qkv_ref[b, :, h, :]
    k = qkv_ref[b, :, num_heads + h, :]
    v = qkv_ref[b, :, 2 * num_heads + h, :]
    g = g_ref[b, :, h, :]
    keep = None if keep_ref is None else keep_ref[b, h, :, :]
    probs, dropped = _probs(q, k, bias_ref[b, :], keep, head_dim, keep_prob)
    dtype = v.dtype
    # context = dropped (cast to the compute dtype) @ v, so:
    dv = lax.dot_general(dropped.astype(dtype), g, (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)
    d_dropped = lax.dot_general(g, v, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
    d_dropped = d_dropped.astype(dtype).astype(jnp.float32)  # the cast's cotangent
    if keep is None:
        d_probs = d_dropped
    else:
        d_probs = jnp.where(keep != 0, d_dropped / jnp.float32(keep_prob), jnp.float32(0))
    d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
    d_logits = (d_logits / jnp.float32(math.sqrt(head_dim))).astype(dtype)
    dq = jnp.dot(d_logits, k, preferred_element_type=jnp.float32)
    dk = lax.dot_general(d_logits, q, (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)
    dqkv_ref[b, :, h, :] = dq.astype(dqkv_ref.dtype)
    dqkv_ref[b, :, num_heads + h, :] = dk.astype(dqkv_ref.dtype)
    dqkv_ref[b, :, 2 * num_heads + h, :] = dv.astype(dqkv_ref.dtype)


_MAX_TILE = 64  # tokens and head_dim, see _unsupported

# Untuned (no GPU has run these kernels yet): a program holds a few 32 x 64 tiles.
_FORWARD_WARPS = 2
_BACKWARD_WARPS = 4


def _unsupported(qkv, key_bias, keep, num_heads) -> str | None:
    """Why the kernel cannot take these shapes, or None if it can."""
    if qkv.ndim != 4 or qkv.shape[2] != 3 * num_heads:
        return f"qkv must be [batch, tokens, 3 * {num_heads}, head_dim], got {qkv.shape}"
    batch, tokens, _, head_dim = qkv.shape
    if key_bias.shape != (batch, tokens):
        return f"key_bias must be [{batch}, {tokens}], got {key_bias.shape}"
    if keep is not None and keep.shape != (batch, num_heads, tokens, tokens):
        return f"keep must be [{batch}, {num_heads}, {tokens}, {tokens}], got {keep.shape}"
    for name, n in (("tokens", tokens), ("head_dim", head_dim)):
        # Triton's tiles and tl.dot take powers of two from 16. A program holds a
        # [tokens, tokens] tile and [tokens, head_dim] ones in registers: beyond 64 they
        # spill or do not fit (docs/kernels.md).
        if n < 16 or n > _MAX_TILE or n & (n - 1):
            return f"the kernel needs {name} a power of two from 16 to {_MAX_TILE}, got {n}"
    if qkv.size >= 2**31:  # Triton indexes in 32 bits
        return f"the kernel indexes in 32 bits; qkv has {qkv.size} elements"
    return None


def available() -> bool:
    """Whether this JAX has Pallas's Triton backend (jax 0.11 marks it deprecated)."""
    try:
        from jax.experimental.pallas import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _pallas(kernel, out_heads, name, matmuls, interpret, num_warps, *args):
    """`kernel` run once per (sequence, head) of `args` (qkv first), writing an array of
    qkv's shape with `out_heads` heads. `name` is the kernel's name in a profile's trace
    (`atjax.bench.profile` finds it by that name); `matmuls` counts its [tokens, tokens,
    head_dim] products, for XLA's cost model."""
    from jax.experimental import pallas as pl

    batch, tokens, _, head_dim = args[0].shape
    heads = args[0].shape[2] // 3
    out = jax.ShapeDtypeStruct((batch, tokens, out_heads, head_dim), args[0].dtype)
    cost = pl.CostEstimate(
        flops=2 * matmuls * batch * heads * tokens * tokens * head_dim,
        transcendentals=batch * heads * tokens * tokens,
        bytes_accessed=sum(a.size * a.dtype.itemsize for a in args) + out.size * out.dtype.itemsize)
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        params["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps, num_stages=1)
    return pl.pallas_call(kernel, out_shape=out, grid=(batch, heads), name=name,
                          cost_estimate=cost, interpret=interpret, **params)(*args)


@functools.cache
def _batch_partitioned(kernel_fn, statics: tuple, out_heads: int, name: str, matmuls: int,
                       interpret: bool, num_warps: int, arity: int):
    """`_pallas` for `arity` arguments, split along the batch under XLA's partitioner.

    A kernel is a custom call that the SPMD partitioner cannot look into: under a jit
    whose batch is sharded over devices (the trainer's data parallelism) it gathered the
    whole batch on every device and ran the kernel on all of it there. Each program reads
    one sequence, so the batch can be split at will: each device runs the kernel on its
    own sequences, every other dimension whole."""
    from jax.experimental.custom_partitioning import custom_partitioning
    from jax.sharding import NamedSharding, PartitionSpec as P

    kernel = functools.partial(kernel_fn, **dict(statics))

    def run(*args):
        return _pallas(kernel, out_heads, name, matmuls, interpret, num_warps, *args)

    partitioned = custom_partitioning(run)

    def batch_sharding(mesh, arg_shapes):
        spec = arg_shapes[0].sharding.spec
        return NamedSharding(mesh, P(spec[0] if len(spec) else None))

    def infer(mesh, arg_shapes, result_shape):
        del result_shape
        return batch_sharding(mesh, arg_shapes)

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        sharding = batch_sharding(mesh, arg_shapes)
        return mesh, run, sharding, (sharding,) * len(arg_shapes)

    # Factor names for Shardy: the batch ("b") shared by every operand and the result,
    # each other dimension its own.
    operands = ["b q0 q1 q2", "b k0"] + [f"b m{i}0 m{i}1 m{i}2" for i in range(arity - 2)]
    partitioned.def_partition(partition=partition, infer_sharding_from_operands=infer,
                              sharding_rule=", ".join(operands) + " -> b o0 o1 o2")
    return partitioned


def _call(kernel_fn, statics: dict, args, *, out_heads, name, matmuls, interpret, num_warps):
    """`kernel_fn` with `statics` (keyword arguments) on `args`, batch-partitioned."""
    return _batch_partitioned(kernel_fn, tuple(sorted(statics.items())), out_heads, name,
                              matmuls, interpret, num_warps, len(args))(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _kernel_attention(qkv, key_bias, keep, num_heads, keep_prob, interpret):
    return _kernel_forward(qkv, key_bias, keep, num_heads, keep_prob, interpret)[0]


def _statics(qkv, keep, num_heads, keep_prob) -> dict:
    """The kernels' static keyword arguments."""
    return dict(num_heads=num_heads, head_dim=qkv.shape[-1], keep_prob=keep_prob,
                has_keep=keep is not None)


def _kernel_forward(qkv, key_bias, keep, num_heads, keep_prob, interpret):
    statics = _statics(qkv, keep, num_heads, keep_prob)
    args = (qkv, key_bias) + (() if keep is None else (keep,))
    context = _call(_forward_kernel, statics, args, out_heads=num_heads,
                    name="attention_forward", matmuls=2, interpret=interpret,
                    num_warps=_FORWARD_WARPS)
    return context, (qkv, key_bias, keep)


def _kernel_backward(num_heads, keep_prob, interpret, residuals, g):
    qkv, key_bias, keep = residuals
    statics = _statics(qkv, keep, num_heads, keep_prob)
    args = (qkv, key_bias) + (() if keep is None else (keep,)) + (g.astype(qkv.dtype),)
    # Five products: the logits again, then the gradients of the context (two) and of
    # the logits (two).
    dqkv = _call(_backward_kernel, statics, args, out_heads=3 * num_heads,
                 name="attention_backward", matmuls=5, interpret=interpret,
                 num_warps=_BACKWARD_WARPS)
    d_keep = None if keep is None else np.zeros(keep.shape, jax.dtypes.float0)
    return dqkv, jnp.zeros_like(key_bias), d_keep


_kernel_attention.defvjp(_kernel_forward, _kernel_backward)


def attention(qkv: jax.Array, key_bias: jax.Array, keep: jax.Array | None = None, *,
              num_heads: int, keep_prob: float = 1.0, impl: str = "xla",
              interpret: bool = False) -> jax.Array:
    """The attention core (arguments as `reference`) by `impl` (see the module doc).

    "pallas" raises where the kernel cannot run (shapes, a JAX without Pallas's Triton
    backend); "auto" then takes the reference. The key bias takes no gradient.
    """
    if impl not in IMPLS:
        raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
    key_bias = lax.stop_gradient(key_bias.astype(jnp.float32))

    def xla(qkv, key_bias, keep):
        return reference(qkv, key_bias, keep, num_heads=num_heads, keep_prob=keep_prob)

    if impl == "xla":
        return xla(qkv, key_bias, keep)
    why = _unsupported(qkv, key_bias, keep, num_heads)
    if why is None and not interpret and not available():
        why = "this JAX has no Pallas Triton backend"
    if why is not None:
        if impl == "pallas":
            raise ValueError(f"attention impl='pallas': {why}; use impl='xla' or 'auto'")
        return xla(qkv, key_bias, keep)

    def kernel(qkv, key_bias, keep):
        # int8: what Triton loads for a mask (XLA fuses the cast into the mask's kernel).
        return _kernel_attention(qkv, key_bias, None if keep is None else keep.astype(jnp.int8),
                                 num_heads, float(keep_prob), interpret)

    if impl == "pallas" or interpret:
        return kernel(qkv, key_bias, keep)
    return lax.platform_dependent(qkv, key_bias, keep, cuda=kernel, default=xla)
