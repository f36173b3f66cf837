"""atjax.train_step pieces checked against independent computation."""

import jax.numpy as jnp
import numpy as np

from atjax import train_step as step_lib


def test_global_norm_matches_numpy_with_small_and_large_leaves():
    rng = np.random.default_rng(0)
    # Small leaves (concatenated), large leaves (summed one by one), bfloat16, a scalar.
    tree = {"bn": {"scale": rng.normal(size=64), "bias": rng.normal(size=64)},
            "conv": rng.normal(size=(3, 3, 64, 128)),
            "big": rng.normal(size=(step_lib.SMALL_LEAF + 7,)),
            "half": rng.normal(size=(33, 5)).astype(np.float32),
            "scalar": np.float32(2.5)}
    jtree = {**{k: v for k, v in tree.items() if k != "half"},
             "half": jnp.asarray(tree["half"], jnp.bfloat16)}
    flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in (
        tree["bn"]["scale"], tree["bn"]["bias"], tree["conv"], tree["big"],
        np.asarray(jnp.asarray(tree["half"], jnp.bfloat16), np.float64), tree["scalar"])])
    got = float(step_lib.global_norm(jtree))
    np.testing.assert_allclose(got, np.sqrt(np.sum(flat ** 2)), rtol=1e-6)
    assert float(step_lib.global_norm({})) == 0.0


def test_global_norm_ends_in_one_reduction_to_a_scalar():
    # Each large leaf is summed along its last axis and all row sums in one final
    # reduction. Without the barrier XLA splits the sum of the concatenation into one sum
    # per leaf (checked here on the unbarriered form too, so that the test can tell).
    import re

    import jax

    tree = {f"w{i}": jnp.ones((300, 256 + i)) for i in range(5)}
    tree["bias"] = jnp.ones((64,))

    def scalar_sums(fn):
        text = jax.jit(fn).lower(tree).compile().as_text()
        return len(re.findall(r"= f32\[\] reduce\(", text))

    def unbarriered(tree):
        return jnp.sum(jnp.concatenate([jnp.sum(jnp.square(x.reshape(-1, x.shape[-1])), axis=1)
                                        for x in jax.tree.leaves(tree)]))

    assert scalar_sums(unbarriered) == 5
    assert scalar_sums(step_lib.global_norm) == 1
    np.testing.assert_allclose(float(step_lib.global_norm(tree)),
                               np.sqrt(sum(x.size for x in jax.tree.leaves(tree))), rtol=1e-6)


def test_train_step_lowers_for_gpus_and_tpus_with_their_forms():
    # CI has no GPU, so the branches that lax.platform_dependent keeps for CUDA (two-stage
    # column sums, the separated LayerNorm parameter gradients, the attention kernel) and
    # the taps stem are never compiled here. Exporting the real step for CUDA and TPU, with
    # the GPU settings of configs/paper.py, lowers them: it fails on an op that cannot lower
    # there, and the CUDA module must hold the GPU forms.
    import pathlib

    import jax

    from atjax import config as config_lib
    from atjax import model as model_lib
    from atjax import sharding

    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load(f"{root}/configs/synthetic.py:size=tiny,head=transformer", [
        "--config.model.compute_dtype=bfloat16", "--config.model.kernels=fast",
        "--config.batch_size=64"])
    mesh = sharding.make_mesh()
    train_def, _, params, batch_stats, rest = step_lib.split_model(model_lib.build(config.model))
    tx = step_lib.make_optimizer(config, params)
    state = step_lib.init_state(params, batch_stats, tx)
    replicated = sharding.replicated(mesh)
    step = step_lib.jit_train_step(train_def, tx, replicated, sharding.batch_sharded(mesh),
                                   replicated)
    samples = model_lib.clip_samples(config.model)
    batch = {"audio": jax.ShapeDtypeStruct((64, samples), jnp.float32),
             "input_ids": jax.ShapeDtypeStruct((64, 32), jnp.int32),
             "attention_mask": jax.ShapeDtypeStruct((64, 32), jnp.int32)}
    modules = {}
    for platform in ("cuda", "tpu"):
        # Triton calls carry no serialisation guarantee; this module is only read.
        exported = jax.export.export(step, platforms=[platform], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
            state, batch, rest, step_lib.base_key(config))
        modules[platform] = exported.mlir_module()
    # 64 captions x 32 tokens = 2048 rows: 16 blocks of 128 on GPUs, a plain sum on TPUs.
    import re

    blocks = re.compile(r"tensor<16x128x\d+xf32>")
    assert blocks.search(modules["cuda"]) and not blocks.search(modules["tpu"])
    assert modules["cuda"].count("optimization_barrier") > modules["tpu"].count(
        "optimization_barrier")
    # The attention core: a kernel per direction on CUDA (where this JAX still has Pallas's
    # Triton backend; "auto" takes the einsums otherwise), the einsums on TPUs.
    from atjax.kernels import attention as attention_lib

    for name in ("attention_forward", "attention_backward"):
        assert (f'name = "{name}"' in modules["cuda"]) == attention_lib.available(), name
    assert "xla.gpu.triton" not in modules["tpu"]


def _tiny_setup(head: str, overrides=()):
    import pathlib

    import jax

    from atjax import config as config_lib
    from atjax import model as model_lib
    from atjax import sharding

    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load(f"{root}/configs/synthetic.py:size=tiny,head={head}",
                             ["--config.model.compute_dtype=bfloat16", *overrides])
    mesh = sharding.make_mesh()
    train_def, _, params, batch_stats, rest = step_lib.split_model(model_lib.build(config.model))
    tx = step_lib.make_optimizer(config, params)
    replicated = sharding.replicated(mesh)
    step = step_lib.jit_train_step(train_def, tx, replicated, sharding.batch_sharded(mesh),
                                   replicated)
    rng = np.random.default_rng(0)
    samples = model_lib.clip_samples(config.model)
    batch = {"audio": jnp.asarray(rng.normal(size=(4, samples)) * 0.1, jnp.float32),
             "input_ids": jnp.asarray(rng.integers(5, 100, (4, 12)), jnp.int32),
             "attention_mask": jnp.ones((4, 12), jnp.int32)}
    # Placed on the mesh as the trainer places them: the step's inputs then have the types
    # of its outputs, and the second step reuses the first one's compilation.
    batch = jax.device_put(batch, sharding.batch_sharded(mesh))
    rest = sharding.replicate(rest, mesh)
    return config, tx, params, batch_stats, rest, step, batch, jax


import pytest  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_weight_copies_leave_the_training_step_unchanged(head):
    # The forward pass reading bfloat16 copies of the kernels must compute what casting the
    # float32 kernels computes: same loss, same gradients, same new parameters, bit for bit.
    config, tx, params, batch_stats, rest, step, batch, jax = _tiny_setup(
        head, ["--config.model.kernel_overrides.weight_copies=True"])
    dtype = step_lib.copies_dtype(config)
    assert dtype == jnp.bfloat16
    from atjax import sharding

    mesh = sharding.make_mesh()
    key = sharding.replicate(step_lib.base_key(config), mesh)
    states = {}
    for name, copies in (("cast", None), ("copies", dtype)):
        # Replicated as the trainer does it (the step donates its state, so a fresh one).
        state = sharding.replicate(step_lib.init_state(params, batch_stats, tx, copies), mesh)
        for _ in range(2):
            state, metrics = step(state, batch, rest, key)
        states[name] = (state, metrics)
    # One compilation per state layout: a second would mean the step's outputs are typed
    # unlike its inputs, and every run would compile its step twice.
    assert step._cache_size() == 2
    (plain, m_plain), (copied, m_copied) = states["cast"], states["copies"]
    assert plain.weight_copies is None
    assert float(m_plain["loss"]) == float(m_copied["loss"])
    assert float(m_plain["grad_norm"]) == float(m_copied["grad_norm"])
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(copied.params)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The copies follow the masters: every kernel of 2+ dimensions, nothing else.
    kernels = {jax.tree_util.keystr(p): x for p, x in
               jax.tree_util.tree_leaves_with_path(copied.params)
               if jax.tree_util.keystr(p).endswith("['kernel']") and x.ndim >= 2}
    copies = {jax.tree_util.keystr(p): x for p, x in
              jax.tree_util.tree_leaves_with_path(copied.weight_copies)}
    assert copies.keys() == kernels.keys() and len(copies) > 10
    assert any("text_encoder" in k for k in copies) and any("conv" in k for k in copies)
    for k, x in copies.items():
        assert x.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(x), np.asarray(kernels[k].astype(jnp.bfloat16)))


def test_weight_copies_need_16_bit_compute_and_stay_out_of_checkpoints():
    config, tx, params, batch_stats, rest, step, batch, jax = _tiny_setup(
        "mlp", ["--config.model.kernel_overrides.weight_copies=True",
                "--config.model.compute_dtype=float32"])
    assert step_lib.copies_dtype(config) is None  # float32 compute: nothing to save
    config.model.kernel_overrides.weight_copies = False
    config.model.compute_dtype = "bfloat16"
    assert step_lib.copies_dtype(config) is None
    config.model.kernel_overrides.weight_copies = None
    assert step_lib.copies_dtype(config) is None  # "reference": no copies
    config.model.kernels = "fast"
    assert step_lib.copies_dtype(config) == jnp.bfloat16
    # A config written before model.kernels: its top-level compute_weight_copies decides.
    config.unlock()
    del config.model.kernels, config.model.kernel_overrides
    assert step_lib.copies_dtype(config) is None
    config.compute_weight_copies = True
    assert step_lib.copies_dtype(config) == jnp.bfloat16
    state = step_lib.init_state(params, batch_stats, tx, jnp.bfloat16)
    bare = step_lib.without_copies(state)
    assert bare.weight_copies is None and len(jax.tree.leaves(bare)) < len(jax.tree.leaves(state))
    again = step_lib.with_copies(bare, jnp.bfloat16)
    for a, b in zip(jax.tree.leaves(again.weight_copies), jax.tree.leaves(state.weight_copies)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_with_weight_copies_the_forward_pass_casts_no_kernel_argument():
    # What the GPU runs: without copies the step converts float32 kernel arguments to
    # bfloat16 (the casts the copies remove); with them, every kernel conversion is of a
    # value the optimizer computed, and the step takes the copies as bfloat16 arguments.
    import re

    config, tx, params, batch_stats, rest, step, batch, jax = _tiny_setup(
        "transformer", ["--config.model.kernel_overrides.weight_copies=True"])
    key = step_lib.base_key(config)
    cast_args = r"stablehlo.convert %arg\d+ : \(tensor<(\d+x)+\d+xf32>\) -> tensor<[0-9x]+xbf16>"
    found = {}
    for name, copies in (("cast", None), ("copies", step_lib.copies_dtype(config))):
        state = jax.eval_shape(lambda: step_lib.init_state(params, batch_stats, tx, copies))
        module = jax.export.export(step, platforms=["cuda"])(state, batch, rest, key).mlir_module()
        found[name] = (len(re.findall(cast_args, module)),
                       len(re.findall(r"%arg\d+: tensor<(?:\d+x)+\d+xbf16>", module)))
    copies = step_lib.weight_copies(params, jnp.bfloat16)
    # The AudioSet classifier (fc_audioset) is not in the loss: its argument is pruned.
    assert copies["audio_encoder"]["fc_audioset"]["kernel"] is not None
    used = len(jax.tree.leaves(copies)) - 1
    # Each used kernel: one float32 argument cast fewer, one bfloat16 argument more. What
    # is still cast whole (attention biases [heads, dim], the CLS token) is tiny.
    assert found["cast"][0] - found["copies"][0] == used, (found, used)
    assert found["copies"][1] - found["cast"][1] == used, (found, used)



@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_reseed_gives_nnx_reseeds_keys_in_one_op(impl):
    # Every dropout stream of the model (one per site) gets nnx.reseed's key and count,
    # bit for bit, eagerly and under jit (as in the train step); an integer seed works as
    # in nnx.reseed (eagerly), and a tag absent from the call (augment) keeps its key.
    import pathlib

    import jax
    from flax import nnx

    from atjax import config as config_lib
    from atjax import model as model_lib

    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load(f"{root}/configs/synthetic.py:size=tiny").model
    config.unlock()
    config.text.pretrained = False

    def streams(model):
        return [(path, s.key.tag, np.asarray(jax.random.key_data(s.key[...])),
                 int(s.count[...])) for path, s in nnx.iter_graph(model)
                if isinstance(s, nnx.RngStream)]

    def reseeded(fn, **keys):
        model = model_lib.build(config, seed=0)
        fn(model, **keys)
        return streams(model)

    @nnx.jit
    def jitted(model, **keys):
        step_lib.reseed(model, **keys)

    untouched = streams(model_lib.build(config, seed=0))
    keys = step_lib.step_keys(jax.random.key(3, impl=impl), jnp.uint32(11))
    for keys in (keys, {"dropout": 5}):
        expected = reseeded(nnx.reseed, **keys)
        assert sum(tag == "dropout" for _, tag, *_ in expected) > 10
        variants = [step_lib.reseed] + ([jitted] if "augment" in keys else [])
        for got in [reseeded(fn, **keys) for fn in variants]:
            assert [(p, t) for p, t, *_ in got] == [(p, t) for p, t, *_ in expected]
            for (*_, a, ca), (*_, b, cb) in zip(got, expected):
                np.testing.assert_array_equal(a, b)
                assert ca == cb == 0
        # Keys differ between sites, and from the unseeded model's.
        dropout = [k.tobytes() for _, tag, k, _ in expected if tag == "dropout"]
        assert len(set(dropout)) == len(dropout)
    for (_, tag, k, _), (_, _, k0, _) in zip(reseeded(step_lib.reseed, dropout=5), untouched):
        assert (k.tobytes() == k0.tobytes()) == (tag != "dropout"), tag
    # A stream with a batch of keys is refused, as nnx.reseed's default policy does.
    model = model_lib.build(config, seed=0)
    stream = next(s for _, s in nnx.iter_graph(model)
                  if isinstance(s, nnx.RngStream) and s.key.tag == "dropout")
    stream.key.set_value(jax.random.split(stream.key[...], 2))
    with pytest.raises(ValueError, match="not a scalar key"):
        step_lib.reseed(model, dropout=jax.random.key(0, impl=impl))


# ------------------------------------------------------------------------------------------
# The optimizer (make_optimizer, learning_rate_schedule) against formulas written out here,
# on the tiny model's parameter tree (shapes only: nothing is initialised or compiled).


def _optimizer_setup(*overrides):
    import pathlib

    import jax
    from flax import nnx

    from atjax import config as config_lib
    from atjax import model as model_lib

    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load(f"{root}/configs/synthetic.py:size=tiny", [
        "optimizer.warmup_steps=0", "optimizer.decay_every_steps=1000000000",
        "optimizer.decay_rate=1.0", "optimizer.grad_clip_norm=0.0",
        "optimizer.text_learning_rate_scale=1.0", *overrides])
    shapes = step_lib.split_model(nnx.eval_shape(lambda: model_lib.build(config.model)))[2]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    assert set(params) >= {"text_encoder", "audio_encoder", "audio_head", "text_head"}
    return config, params, jax


def _leaf(tree, path):
    for entry in path:
        tree = tree[getattr(entry, "key", entry)]
    return tree


def _is_text(path) -> bool:
    return getattr(path[0], "key", path[0]) == "text_encoder"


def _adam_steps(config, params, grads, steps):
    """The updates of `steps` optimizer steps, each with the same gradients `grads`."""
    import jax

    tx = step_lib.make_optimizer(config, params)
    state = tx.init(params)
    out = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        out.append(jax.tree.map(np.asarray, updates))
    return out


def test_learning_rate_schedule_is_linear_warmup_then_step_lr():
    config, _, _ = _optimizer_setup("optimizer.learning_rate=0.002")
    # StepLR: lr * gamma ** floor(step / decay_every).
    config.optimizer.decay_every_steps, config.optimizer.decay_rate = 10, 0.5
    schedule = step_lib.learning_rate_schedule(config)
    for step in (0, 1, 9, 10, 11, 19, 20, 35, 99, 100):
        np.testing.assert_allclose(float(schedule(step)), 0.002 * 0.5 ** (step // 10),
                                   rtol=1e-6, err_msg=str(step))
    # A linear warmup from 0 over its steps; StepLR counts the steps after it.
    config.optimizer.warmup_steps = 4
    schedule = step_lib.learning_rate_schedule(config)
    for step in (0, 1, 2, 3):
        np.testing.assert_allclose(float(schedule(step)), 0.002 * step / 4, rtol=1e-6, atol=0)
    for step in (4, 5, 13, 14, 23, 24, 104):
        np.testing.assert_allclose(float(schedule(step)), 0.002 * 0.5 ** ((step - 4) // 10),
                                   rtol=1e-6, err_msg=str(step))


def test_adam_steps_follow_the_schedule_and_scale_the_text_rate():
    # With the same gradient g at every step, Adam's bias-corrected moments are g and g^2,
    # so step k moves each weight by -lr(k) * g / (|g| + eps): the rate of each step, read
    # back. The text encoder's is lr(k) * text_learning_rate_scale.
    config, params, jax = _optimizer_setup(
        "optimizer.learning_rate=0.004", "optimizer.warmup_steps=2",
        "optimizer.decay_every_steps=3", "optimizer.decay_rate=0.1",
        "optimizer.text_learning_rate_scale=0.25")
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
    rates = [0.0, 0.002, 0.004, 0.004, 0.004, 0.0004, 0.0004]
    eps = config.optimizer.eps
    for k, updates in enumerate(_adam_steps(config, params, grads, len(rates))):
        for path, u in jax.tree_util.tree_leaves_with_path(updates):
            g = np.asarray(_leaf(grads, path), np.float64)
            rate = rates[k] * (0.25 if _is_text(path) else 1.0)
            np.testing.assert_allclose(u, -rate * g / (np.abs(g) + eps), rtol=2e-5, atol=1e-12,
                                       err_msg=f"step {k} {jax.tree_util.keystr(path)}")


def test_a_frozen_text_encoder_stays_put_while_the_rest_trains():
    import optax

    config, params, jax = _optimizer_setup("model.text.freeze=True",
                                           "optimizer.learning_rate=0.001")
    rng = np.random.default_rng(2)
    grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
    tx = step_lib.make_optimizer(config, params)
    state = tx.init(params)
    new = params
    for _ in range(3):
        updates, state = tx.update(grads, state, new)
        new = optax.apply_updates(new, updates)
    moved = {jax.tree_util.keystr(p): float(np.max(np.abs(np.asarray(_leaf(new, p)) - x)))
             for p, x in jax.tree_util.tree_leaves_with_path(params)}
    text = {k: v for k, v in moved.items() if k.startswith("['text_encoder']")}
    rest = {k: v for k, v in moved.items() if k not in text}
    assert len(text) > 5 and all(v == 0.0 for v in text.values()), text
    # Three Adam steps of a constant gradient move every other weight by 3 * lr.
    for k, v in rest.items():
        assert v == pytest.approx(0.003, rel=1e-3), k


def test_clipping_scales_the_gradients_to_the_global_norm_first():
    # A large eps makes Adam's step depend on the gradient's size: -lr * g / (|g| + eps),
    # with g the gradients scaled by min(1, clip / global norm) over every parameter.
    clip, eps, lr = 0.5, 0.01, 0.001
    config, params, jax = _optimizer_setup(f"optimizer.grad_clip_norm={clip}",
                                           f"optimizer.eps={eps}", f"optimizer.learning_rate={lr}")
    rng = np.random.default_rng(3)
    grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
    norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads)))
    assert norm > 20 * clip
    (updates,) = _adam_steps(config, params, grads, 1)
    worst_unclipped = 0.0
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        g = np.asarray(_leaf(grads, path), np.float64)
        clipped = g * clip / norm
        np.testing.assert_allclose(u, -lr * clipped / (np.abs(clipped) + eps), rtol=1e-4,
                                   atol=1e-12, err_msg=jax.tree_util.keystr(path))
        worst_unclipped = max(worst_unclipped, float(np.max(
            np.abs(u + lr * g / (np.abs(g) + eps)) / (lr * np.abs(g) / (np.abs(g) + eps)))))
    assert worst_unclipped > 0.5  # unclipped gradients would have moved the weights apart
    # Below the threshold the gradients pass unchanged.
    config.optimizer.grad_clip_norm = float(2 * norm)
    (updates,) = _adam_steps(config, params, grads, 1)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        g = np.asarray(_leaf(grads, path), np.float64)
        np.testing.assert_allclose(u, -lr * g / (np.abs(g) + eps), rtol=1e-4, atol=1e-12)
