"""atjax.kernels.attention: the Pallas kernels (run in Pallas's interpreter on the CPU) against the
reference einsums, forward and backward; the text encoder with either form; the choice
of form and its errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atjax import kernels
from atjax.encoders import text as text_lib
from atjax.kernels import attention as attention_lib

BATCH, TOKENS, HEADS, HEAD_DIM = 3, 32, 2, 16


def _inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    qkv = jnp.asarray(rng.normal(size=(BATCH, TOKENS, 3 * HEADS, HEAD_DIM)), dtype)
    lengths = np.array([TOKENS, 20, 1])  # a full caption, a padded one, a single token
    key_bias = jnp.where(np.arange(TOKENS)[None, :] < lengths[:, None], 0.0,
                         jnp.finfo(jnp.float32).min)
    keep = jnp.asarray(rng.random((BATCH, HEADS, TOKENS, TOKENS)) > 0.25)
    cotangent = jnp.asarray(rng.normal(size=(BATCH, TOKENS, HEADS, HEAD_DIM)), dtype)
    return qkv, key_bias, keep, cotangent


def _forward_and_grad(impl, qkv, key_bias, keep, cotangent, keep_prob=0.75):
    def f(qkv):
        return attention_lib.attention(qkv, key_bias, keep, num_heads=HEADS,
                                       keep_prob=keep_prob, impl=impl,
                                       interpret=impl == "pallas")
    out, vjp = jax.vjp(f, qkv)
    return np.asarray(out, np.float32), np.asarray(vjp(cotangent)[0], np.float32)


def _independent(qkv, key_bias, keep, keep_prob):
    """The attention core in float64 NumPy, written from the definition."""
    qkv = np.asarray(qkv, np.float64)
    q, k, v = (qkv[:, :, i * HEADS:(i + 1) * HEADS] for i in range(3))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(HEAD_DIM)
    logits = logits + np.asarray(key_bias, np.float64)[:, None, None, :]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    probs = np.where(np.asarray(keep), probs / keep_prob, 0.0)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_reference_is_the_encoders_former_attention_bit_for_bit(dtype):
    # Before atjax.kernels.attention the text layer computed its attention inline, its Dropout
    # module masking the probabilities; the reference with that module's keep_mask must
    # give the same bits, forward and backward, under jit.
    from atjax.kernels import dropout as dropout_lib

    qkv, key_bias, _, g = _inputs(dtype)
    former_dropout = dropout_lib.Dropout(0.1, rngs=nnx.Rngs(dropout=4))
    new_dropout = dropout_lib.Dropout(0.1, rngs=nnx.Rngs(dropout=4))

    def former_core(dropout, qkv):
        q, k, v = jnp.split(qkv, 3, axis=2)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / np.sqrt(HEAD_DIM) + key_bias[:, None, None, :]
        probs = dropout(jax.nn.softmax(logits, axis=-1))
        return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v)

    def new_core(dropout, qkv):
        keep, keep_prob = dropout.keep_mask((BATCH, HEADS, TOKENS, TOKENS))
        return attention_lib.attention(qkv, key_bias, keep, num_heads=HEADS,
                                       keep_prob=keep_prob)

    def with_gradient(core):
        def loss(dropout, qkv):  # sum(out * g): its gradient is the VJP of g
            out = core(dropout, qkv)
            return jnp.sum(out.astype(jnp.float32) * g.astype(jnp.float32)), out
        grad = nnx.grad(loss, argnums=1, has_aux=True)
        return nnx.jit(lambda dropout, qkv: grad(dropout, qkv)[::-1])

    former, new = with_gradient(former_core), with_gradient(new_core)

    for _ in range(2):
        for a, b in zip(former(former_dropout, qkv), new(new_dropout, qkv)):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("with_dropout", [True, False])
def test_kernel_matches_the_reference_in_float32(with_dropout):
    qkv, key_bias, keep, g = _inputs(jnp.float32)
    keep = keep if with_dropout else None
    out, grad = _forward_and_grad("pallas", qkv, key_bias, keep, g)
    ref_out, ref_grad = _forward_and_grad("xla", qkv, key_bias, keep, g)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5)
    if with_dropout:  # both against the definition, in float64
        np.testing.assert_allclose(ref_out, _independent(qkv, key_bias, keep, 0.75),
                                   rtol=1e-5, atol=1e-5)
    # Padded keys take no weight: changing them changes nothing for the padded caption.
    moved = qkv.at[1, 20:, HEADS:].add(100.0)
    np.testing.assert_allclose(_forward_and_grad("pallas", moved, key_bias, keep, g)[0][1],
                               out[1], rtol=1e-5, atol=1e-5)


def test_kernel_matches_the_reference_in_bfloat16():
    qkv, key_bias, keep, g = _inputs(jnp.bfloat16, seed=1)
    out, grad = _forward_and_grad("pallas", qkv, key_bias, keep, g)
    ref_out, ref_grad = _forward_and_grad("xla", qkv, key_bias, keep, g)
    # Same operations in the same dtypes; summation order may move the last bfloat16 bit.
    np.testing.assert_allclose(out, ref_out, rtol=2**-7, atol=2**-7)
    np.testing.assert_allclose(grad, ref_grad, rtol=2**-6, atol=2**-6 * np.abs(ref_grad).max())


def test_gradient_of_the_kernel_is_the_gradient_of_its_function():
    # The hand-written backward against finite differences of the kernel's own forward.
    qkv, key_bias, keep, g = _inputs(jnp.float32, seed=2)

    def loss(qkv):
        out = attention_lib.attention(qkv, key_bias, keep, num_heads=HEADS, keep_prob=0.75,
                                      impl="pallas", interpret=True)
        return jnp.sum(out * g)

    grad = jax.grad(loss)(qkv)
    direction = jnp.asarray(np.random.default_rng(3).normal(size=qkv.shape), jnp.float32)
    eps = 1e-2
    numeric = (loss(qkv + eps * direction) - loss(qkv - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(numeric), rtol=2e-3)


def _encoder(impl, dtype, seed=0):
    c = dataclasses.replace(text_lib.preset("roberta-base"), num_layers=2, hidden_size=64,
                            num_heads=4, intermediate_size=128)
    # The other GPU kernels on (float32 bias gradients: bfloat16 column sums would swamp
    # the comparison), 32-bit dropout masks.
    chosen = kernels.choose("fast", {"attention": impl, "dropout_mask_bits": 32})
    return text_lib.TextEncoder(c, dtype=dtype, kernels=chosen, rngs=nnx.Rngs(seed, dropout=1))


def _encoder_step(encoder):
    rng = np.random.default_rng(0)
    mask = jnp.ones((4, 32), jnp.int32).at[1, 20:].set(0)
    ids = jnp.where(mask > 0, jnp.asarray(rng.integers(3, 1000, (4, 32))), 1)

    def loss(encoder):
        return jnp.mean(jnp.tanh(encoder(ids, mask).astype(jnp.float32)))

    values, grads = [], []
    for _ in range(2):  # the dropout streams advance alike in both forms
        value, grad = nnx.value_and_grad(loss)(encoder)
        values.append(float(value))
        grads.append({jax.tree_util.keystr(path): np.asarray(leaf, np.float64) for path, leaf
                      in jax.tree_util.tree_leaves_with_path(nnx.state(grad))})
    return values, grads


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_text_encoder_with_the_kernel_trains_like_the_einsums(dtype, monkeypatch):
    reference = _encoder_step(_encoder("xla", dtype))
    monkeypatch.setattr(attention_lib, "attention",
                        functools.partial(attention_lib.attention, interpret=True))
    kernel = _encoder_step(_encoder("pallas", dtype))
    # Leaf by leaf, so that an error in the attention's own gradients (qkv) is not diluted
    # by the rest; measured at most 1.9e-7 (float32) and 4.8e-5 (bfloat16).
    tol = 2e-6 if dtype == jnp.float32 else 5e-4
    for (v1, g1), (v2, g2) in zip(zip(*reference), zip(*kernel)):
        assert abs(v1 - v2) <= tol * abs(v1)
        assert g1.keys() == g2.keys() and any("qkv" in name for name in g1)
        for name in g1:
            error = np.linalg.norm(g1[name] - g2[name])
            assert error <= tol * np.linalg.norm(g1[name]), (name, error)
    # Dropout is on: the second step's masks differ from the first's in both forms.
    assert reference[0][0] != reference[0][1]


def test_auto_is_the_reference_off_gpu_and_errors_name_the_problem():
    qkv, key_bias, keep, g = _inputs(jnp.float32)
    auto = _forward_and_grad("auto", qkv, key_bias, keep, g)
    xla = _forward_and_grad("xla", qkv, key_bias, keep, g)
    for a, b in zip(auto, xla):
        np.testing.assert_array_equal(a, b)
    odd = qkv[:, :20]  # 20 tokens: no power of two
    with pytest.raises(ValueError, match="tokens a power of two from 16 to 64, got 20"):
        attention_lib.attention(odd, key_bias[:, :20], None, num_heads=HEADS, impl="pallas")
    long = jnp.zeros((1, 128, 3 * HEADS, HEAD_DIM))  # spills on an H200: not taken
    with pytest.raises(ValueError, match="got 128"):
        attention_lib.attention(long, jnp.zeros((1, 128)), None, num_heads=HEADS,
                                impl="pallas")
    np.testing.assert_array_equal(  # "auto" takes the reference there
        attention_lib.attention(odd, key_bias[:, :20], None, num_heads=HEADS, impl="auto"),
        attention_lib.attention(odd, key_bias[:, :20], None, num_heads=HEADS, impl="xla"))
    with pytest.raises(ValueError, match="attention impl must be one of"):
        attention_lib.attention(qkv, key_bias, None, num_heads=HEADS, impl="cudnn")
    with pytest.raises(ValueError, match="keep must be"):
        attention_lib.attention(qkv, key_bias, keep[:, :1], num_heads=HEADS, impl="pallas")
    with pytest.raises(ValueError, match="kernel attention must be one of"):
        kernels.choose("reference", {"attention": "flash"})


def test_attention_benchmark_checks_the_kernel_before_timing_it(monkeypatch, capsys, tmp_path):
    import json

    from atjax.bench import attention as bench

    small = ["--interpret", "--batch_size", "2", "--tokens", "16", "--heads", "2",
             "--head_dim", "16", "--calls", "1", "--repeats", "1"]
    assert bench.main(small + ["--out", str(tmp_path / "a.jsonl")]) == 0
    line = json.loads((tmp_path / "a.jsonl").read_text())
    assert line["match"] and line["context_diff"] <= 2**-6 and line["xla_us"] > 0
    assert (line["tokens"], line["heads"], line["dtype"]) == (16, 2, "bfloat16")

    def wrong(*refs, **kwargs):  # a kernel that forgets the values: zeros
        out = refs[-1]
        out[...] = jnp.zeros(out.shape, out.dtype)

    monkeypatch.setattr(attention_lib, "_forward_kernel", wrong)
    capsys.readouterr()
    assert bench.main(small + ["--dtype", "float32", "--rate", "0"]) == 1
    captured = capsys.readouterr()
    assert '"match": false' in captured.out and "differs from the reference" in captured.err


def test_kernel_splits_a_sharded_batch_across_devices():
    # Under a jit whose batch is sharded over 4 devices, each device runs the kernel on
    # its own sequences (atjax.kernels.attention._batch_partitioned): no gathering of the batch
    # (the partitioner gathered it without the rule), and the same values as on one device.
    import os
    import subprocess
    import sys

    code = """
import re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from atjax.kernels import attention as A
r = np.random.default_rng(0)
B, T, H, D = 8, 16, 2, 16
qkv = jnp.asarray(r.normal(size=(B, T, 3 * H, D)), jnp.float32)
bias = jnp.where(jnp.arange(T)[None] < jnp.asarray(r.integers(1, T + 1, (B, 1))), 0.0, -1e30)
keep = jnp.asarray(r.random((B, H, T, T)) > 0.2)
g = jnp.asarray(r.normal(size=(B, T, H, D)), jnp.float32)
def f(qkv, bias, keep, g):
    out, vjp = jax.vjp(lambda x: A.attention(x, bias, keep, num_heads=H, keep_prob=0.8,
                                             impl="pallas", interpret=True), qkv)
    return out, vjp(g)[0]
single = [np.asarray(x) for x in jax.jit(f)(qkv, bias, keep, g)]
mesh = Mesh(np.array(jax.devices()), ("data",))
sh = NamedSharding(mesh, P("data"))
args = [jax.device_put(x, sh) for x in (qkv, bias, keep, g)]
step = jax.jit(f, out_shardings=(sh, sh))
text = step.lower(*args).compile().as_text()
assert not re.search(r"all-gather|all-reduce|all-to-all|collective-permute", text), "gathered"
outs = step(*args)
for out, one in zip(outs, single):
    assert len(out.sharding.device_set) == 4
    np.testing.assert_allclose(np.asarray(out), one, rtol=1e-6, atol=1e-6)
print("OK")
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
