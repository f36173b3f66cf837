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
