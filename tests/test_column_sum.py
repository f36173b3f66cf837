"""atjax.kernels.column_sum (per-feature sums in two stages on GPUs) and the text encoder's bias add
that uses it. The GPU form is run here directly and its selection is checked in a lowering
for CUDA, which needs no GPU."""

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atjax.kernels import column_sum
from atjax.encoders import bert


@pytest.mark.parametrize("shape", [(64, 32, 40), (7, 300, 5), (129, 3), (100, 2)])
def test_blocked_sums_equal_float64_sums(shape):
    # (64, 32, 40): 2048 rows in 16 full blocks; (7, 300, 5): 2100 rows, the last block
    # padded; (129, 3): fewer rows than two blocks, summed plainly; (100, 2) with a block of
    # 8 rows: 13 blocks, the last one padded with 4 zero rows.
    rng = np.random.default_rng(0)
    a = rng.normal(size=shape) + 3.0
    b = rng.normal(size=shape)
    block = 8 if shape == (100, 2) else column_sum.BLOCK_ROWS
    got = jax.jit(lambda x, y: column_sum.blocked_sums(x, y, block_rows=block))(
        jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    axes = tuple(range(len(shape) - 1))
    for g, want in zip(got, (a.sum(axes), b.sum(axes))):
        assert g.dtype == jnp.float32 and g.shape == shape[-1:]
        np.testing.assert_allclose(np.asarray(g), want, rtol=2e-6, atol=2e-4)


def test_column_sums_reads_bfloat16_in_float32():
    # 4096 copies of 1 + 2^-7 (exact in bfloat16) sum to 4128 in float32; a bfloat16
    # accumulator would stall at 256, where the spacing of bfloat16 numbers reaches 2.
    x = jnp.full((64, 64, 3), 1 + 2.0 ** -7, jnp.bfloat16)
    (s,) = jax.jit(column_sum.column_sums)(x)
    assert s.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(s), np.full(3, 4096 * (1 + 2.0 ** -7)))
    (s,) = jax.jit(column_sum.blocked_sums)(x.astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(s), np.full(3, 4096 * (1 + 2.0 ** -7)))


def test_column_sums_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        column_sum.column_sums()
    with pytest.raises(ValueError, match="one shape"):
        column_sum.column_sums(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="one shape"):
        column_sum.column_sums(jnp.zeros(()))
    with pytest.raises(ValueError, match="block_rows"):
        column_sum.column_sums(jnp.zeros((4, 3)), block_rows=0)


def _lowered(platform: str, fn, *args) -> str:
    exported = jax.export.export(jax.jit(fn), platforms=[platform])(*args)
    return exported.mlir_module()


def test_gpus_get_the_two_stage_form_and_cpus_the_plain_one():
    x = jax.ShapeDtypeStruct((64, 32, 1024), jnp.float32)
    cuda = _lowered("cuda", lambda a: column_sum.column_sums(a, a * a), x)
    cpu = _lowered("cpu", lambda a: column_sum.column_sums(a, a * a), x)
    # CUDA: one two-output reduction of 16 blocks of 128 rows, then the barrier.
    assert "tensor<16x128x1024xf32>" in cuda and "optimization_barrier" in cuda
    assert "optimization_barrier" not in cpu and "16x128x1024" not in cpu


def _linear_case(dtype, features: int, bias: float, seeds: tuple[int, int], batch: int):
    """An nnx.Linear(16 -> features) split into (graphdef, state), with a bias ramp of
    +-bias, and an input [batch, 64, 16] and output cotangent drawn in `dtype`."""
    layer = nnx.Linear(16, features, dtype=dtype, param_dtype=jnp.float32,
                       rngs=nnx.Rngs(seeds[0]))
    layer.bias.set_value(jnp.linspace(-bias, bias, features))
    graphdef, state = nnx.split(layer)
    rng = np.random.default_rng(seeds[1])
    x = jnp.asarray(rng.normal(size=(batch, 64, 16)), dtype)
    cot = jnp.asarray(rng.normal(size=(batch, 64, features)), dtype)
    return graphdef, state, x, cot


def _fast_dense(layer, x, activation=None, remat=False):
    return bert.dense(layer, x, activation, column_sum=True, remat=remat)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_matches_nnx_linear(dtype):
    # Same forward values as nnx.Linear; the same gradients, the bias gradient summed in
    # float32 (against float64 here: a bfloat16 sum like autodiff's is visibly worse).
    graphdef, state, x, cot = _linear_case(dtype, 24, 1.0, (0, 1), batch=8)

    def outputs(apply, params):
        return apply(nnx.merge(graphdef, params), x)

    reference = outputs(lambda m, v: m(v), state)
    ours = outputs(_fast_dense, state)
    assert ours.dtype == reference.dtype == dtype
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(reference, np.float32))

    def vjp(apply):
        _, pullback = jax.vjp(lambda p: outputs(apply, p), state)
        return pullback(cot)[0]

    ref_grads, our_grads = vjp(lambda m, v: m(v)), vjp(_fast_dense)
    np.testing.assert_array_equal(np.asarray(our_grads["kernel"].get_value()),
                                  np.asarray(ref_grads["kernel"].get_value()))
    dbias = our_grads["bias"].get_value()
    assert dbias.dtype == jnp.float32
    want = np.asarray(cot, np.float64).sum((0, 1))
    np.testing.assert_allclose(np.asarray(dbias), want, rtol=1e-5, atol=1e-4)
    if dtype == jnp.bfloat16:
        ref_err = np.abs(np.asarray(ref_grads["bias"].get_value(), np.float64) - want).max()
        assert np.abs(np.asarray(dbias, np.float64) - want).max() < ref_err / 4
    else:
        np.testing.assert_allclose(np.asarray(dbias), np.asarray(ref_grads["bias"].get_value()),
                                   rtol=1e-5, atol=1e-5)


def test_dense_input_gradient_passes_through():
    layer = nnx.Linear(5, 3, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(2))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)), jnp.float32)
    want = jax.grad(lambda v: jnp.sum(jnp.tanh(layer(v))))(x)
    got = jax.grad(lambda v: jnp.sum(jnp.tanh(_fast_dense(layer, v))))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("column_sum", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "relu"])
def test_dense_activation_is_rematerialised_with_the_same_numbers(dtype, activation,
                                                                  column_sum, capsys):
    # `dense(layer, x, act, remat=True)` recomputes the activation in the backward pass:
    # the values bit for bit those of `act(dense(layer, x))` and the gradients equal to
    # rounding (XLA may keep a fused bfloat16 intermediate unrounded), while the forward
    # keeps only the matmul's output for it (not exact GELU's erfc intermediates).
    act = bert._ACTIVATIONS[activation]
    graphdef, state, x, cot = _linear_case(dtype, 32, 0.5, (4, 5), batch=4)

    def plain(p, v):
        return act(bert.dense(nnx.merge(graphdef, p), v, column_sum=column_sum))

    def remat(p, v):
        return bert.dense(nnx.merge(graphdef, p), v, act, column_sum=column_sum, remat=True)

    results = {}
    for name, f in (("plain", plain), ("remat", remat)):
        out, pullback = jax.jit(lambda p, v, f=f: jax.vjp(f, p, v))(state, x)
        results[name] = (out, *pullback(cot))
    (out_plain, *grads_plain), (out_remat, *grads_remat) = results["plain"], results["remat"]
    np.testing.assert_array_equal(np.asarray(out_plain, np.float32),
                                  np.asarray(out_remat, np.float32))
    rtol = 1e-5 if dtype == jnp.float32 else 2 ** -6
    for a, b in zip(jax.tree.leaves(grads_plain), jax.tree.leaves(grads_remat)):
        assert a.dtype == b.dtype
        scale = float(np.abs(np.asarray(a, np.float32)).max())
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32),
                                   rtol=rtol, atol=rtol * scale)

    def saved(f):
        capsys.readouterr()
        jax.ad_checkpoint.print_saved_residuals(lambda p, v: jnp.sum(f(p, v)), state, x)
        return capsys.readouterr().out

    kept = saved(remat)
    assert "erfc" not in kept and "exp" not in kept
    short = {jnp.float32: "f32", jnp.bfloat16: "bf16"}[dtype]
    assert f"{short}[4,64,32]" in kept, kept  # the layer's output, once
    if column_sum:  # before the bias: the matmul's own output
        assert f"{short}[4,64,32] output of dot_general" in kept, kept
    if activation == "gelu":
        assert "erfc" in saved(plain)


def test_remat_activation_setting_follows_the_compute_dtype_unless_forced():
    import dataclasses

    from atjax import kernels

    tiny = dataclasses.replace(bert.preset("bert-base"), num_layers=1, hidden_size=32,
                               num_heads=2, intermediate_size=64, vocab_size=50)

    def flag(setting, dtype, **overrides):
        chosen = kernels.choose(setting, overrides)
        encoder = bert.TextEncoder(tiny, dtype=dtype, kernels=chosen, rngs=nnx.Rngs(0))
        return encoder.layers[0].remat_activation

    # "fast": recomputed for 16-bit compute; float32 keeps autodiff's residuals, the
    # numbers the CPU studies were made with. "reference": never, unless forced.
    assert flag("fast", jnp.bfloat16) is True and flag("fast", jnp.float32) is False
    assert flag("reference", jnp.bfloat16) is False
    assert flag("reference", jnp.float32, remat_activation=True) is True
    assert flag("fast", jnp.bfloat16, remat_activation=False) is False
    with pytest.raises(ValueError, match="remat_activation must be None"):
        kernels.choose("reference", {"remat_activation": "yes"})
