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


def test_train_step_lowers_for_gpus_and_tpus_with_their_forms():
    # CI has no GPU, so the branches that lax.platform_dependent keeps for CUDA (two-stage
    # column sums, the separated LayerNorm parameter gradients) and the taps stem are never
    # compiled here. Exporting the real step for CUDA and TPU lowers them: it fails on an
    # op that cannot lower there, and the CUDA module must hold the GPU forms.
    import pathlib

    import jax

    from atjax import config as config_lib
    from atjax import model as model_lib
    from atjax import sharding

    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load(f"{root}/configs/synthetic.py:size=tiny,head=transformer", [
        "--config.model.compute_dtype=bfloat16", "--config.model.audio.stem_conv=taps",
        "--config.model.dropout_mask_bits=16", "--config.batch_size=64"])
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
        exported = jax.export.export(step, platforms=[platform])(
            state, batch, rest, step_lib.base_key(config))
        modules[platform] = exported.mlir_module()
    # 64 captions x 32 tokens = 2048 rows: 16 blocks of 128 on GPUs, a plain sum on TPUs.
    import re

    blocks = re.compile(r"tensor<16x128x\d+xf32>")
    assert blocks.search(modules["cuda"]) and not blocks.search(modules["tpu"])
    assert modules["cuda"].count("optimization_barrier") > modules["tpu"].count(
        "optimization_barrier")
