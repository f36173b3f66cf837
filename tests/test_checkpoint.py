"""Checkpoint layout: the train state is saved as plain dicts; older nnx.State-layout
checkpoints still resume; a checkpoint of the wrong shape is refused, not reshaped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from atjax import checkpoint as ckpt_lib
from atjax import train_step as step_lib
from atjax.encoders import panns


def _states():
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    _, params = nnx.split(model, nnx.Param)
    # As the trainer's optimizer: Adam per label, so masked-out entries (optax's
    # MaskedNode) sit in the state too.
    tx = optax.multi_transform({"trained": optax.adam(1e-3), "other": optax.adam(1e-4)},
                               lambda tree: jax.tree_util.tree_map_with_path(
                                   lambda path, _: "other" if "bias" in jax.tree_util.keystr(path)
                                   else "trained", tree))
    # Make the optimizer moments non-trivial so that a mix-up of mu and nu would show.
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    _, opt_state = tx.update(grads, opt_state, params)
    legacy = step_lib.TrainState(step=jnp.asarray(7, jnp.int32), params=params,
                                 batch_stats=nnx.State({}), opt_state=opt_state)
    pure = params.to_pure_dict()
    current = step_lib.TrainState(step=jnp.asarray(0, jnp.int32), params=pure, batch_stats={},
                                  opt_state=tx.init(pure))
    return legacy, current


def test_state_layout_is_plain_dicts():
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    _, _, params, batch_stats, rest = step_lib.split_model(nnx.Sequential(model))
    for tree in (params, batch_stats, rest):
        assert type(tree) is dict
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert paths == ["['layers'][0]['bias']", "['layers'][0]['kernel']"]


def test_legacy_layout_checkpoint_resumes(tmp_path):
    legacy, current = _states()
    checkpoints = ckpt_lib.Checkpoints(tmp_path, keep=2, best_metric=None)
    checkpoints.save(7, legacy, {"epoch": 3}, force=True)
    checkpoints.wait()
    state, input_state = checkpoints.restore(7, ckpt_lib.abstract_like(current))
    checkpoints.close()
    assert input_state == {"epoch": 3}
    assert int(state.step) == 7
    assert jax.tree.structure(state) == jax.tree.structure(current)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(legacy)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Adam's second moment is not its first: the leaves went back to their own places.
    adam = state.opt_state.inner_states["trained"].inner_state[0]
    assert isinstance(adam.mu["bias"], optax.MaskedNode)
    assert not np.allclose(adam.mu["kernel"], adam.nu["kernel"])


def test_wrong_shape_checkpoint_is_refused(tmp_path):
    _, current = _states()
    checkpoints = ckpt_lib.Checkpoints(tmp_path, keep=2, best_metric=None)
    checkpoints.save(1, current, {}, force=True)
    checkpoints.wait()
    wrong = current.replace(params={**current.params, "kernel": jnp.zeros((5, 4))})
    with pytest.raises(ValueError):
        checkpoints.restore(1, ckpt_lib.abstract_like(wrong))
    checkpoints.close()


def _to_hwio(tree):
    """A tree as code before 2026-11-26 saved it: conv kernels [kh, kw, in, out]."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.transpose(x, (1, 2, 3, 0)) if panns._is_conv_kernel(path, x) else x,
        tree)


def _nnx_state(tree):
    return nnx.State(jax.tree.map(nnx.Param, tree))


@pytest.mark.parametrize("nnx_layout", [False, True], ids=["plain", "nnx-leaves"])
def test_hwio_kernel_checkpoint_resumes(tmp_path, nnx_layout):
    # A conv kernel [out, kh, kw, in] = [6, 3, 3, 4], a dense kernel and a bias, with Adam's
    # moments made non-trivial; saved with the kernel and its moments HWIO (and, for the
    # second case, every leaf under "value" as well), restored into the current layout.
    rng = np.random.default_rng(0)
    params = {"audio_encoder": {"conv": {"kernel": jnp.asarray(rng.normal(size=(6, 3, 3, 4)),
                                                               jnp.float32)}},
              "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
                        "bias": jnp.zeros(5)}}
    tx = optax.adam(1e-3)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    _, opt_state = tx.update(grads, tx.init(params), params)
    current = step_lib.TrainState(step=jnp.asarray(5, jnp.int32), params=params,
                                  batch_stats={}, opt_state=opt_state)
    saved = _to_hwio(current)
    assert saved.params["audio_encoder"]["conv"]["kernel"].shape == (3, 3, 4, 6)
    if nnx_layout:
        # As code before the plain-dict state held it: nnx.State of Param variables, and
        # Adam's moments likewise (what tx.init of such a State gives).
        adam, scale = saved.opt_state
        saved = step_lib.TrainState(
            step=saved.step, params=_nnx_state(saved.params), batch_stats=nnx.State({}),
            opt_state=(adam._replace(mu=_nnx_state(adam.mu), nu=_nnx_state(adam.nu)), scale))
    checkpoints = ckpt_lib.Checkpoints(tmp_path, keep=2, best_metric=None)
    checkpoints.save(5, saved, {"epoch": 1}, force=True)
    checkpoints.wait()
    state, input_state = checkpoints.restore(5, ckpt_lib.abstract_like(current))
    checkpoints.close()
    assert input_state == {"epoch": 1} and int(state.step) == 5
    assert jax.tree.structure(state) == jax.tree.structure(current)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(current)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
