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
