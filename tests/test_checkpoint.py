"""Checkpoint layout: the train state is saved as plain dicts; a checkpoint of the wrong
shape is refused, not reshaped, with every misfit named the way all of atjax's checkpoint
readers name them (`checkpoint.mismatch`)."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from atjax import checkpoint as ckpt_lib
from atjax import train_step as step_lib


def _state():
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    _, params = nnx.split(model, nnx.Param)
    pure = params.to_pure_dict()
    tx = optax.adam(1e-3)
    return step_lib.TrainState(step=jnp.asarray(0, jnp.int32), params=pure, batch_stats={},
                               opt_state=tx.init(pure))


def test_state_layout_is_plain_dicts():
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    _, _, params, batch_stats, rest = step_lib.split_model(nnx.Sequential(model))
    for tree in (params, batch_stats, rest):
        assert type(tree) is dict
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert paths == ["['layers'][0]['bias']", "['layers'][0]['kernel']"]


def test_wrong_shape_checkpoint_is_refused(tmp_path):
    current = _state()
    checkpoints = ckpt_lib.Checkpoints(tmp_path, keep=2, best_metric=None)
    checkpoints.save(1, current, {}, force=True)
    checkpoints.wait()
    wrong = current.replace(params={**current.params, "kernel": jnp.zeros((5, 4))})
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"step 1 in .* does not fit the model this config builds: "
                             r"wrong shape \(\d\): params/kernel saved \(3, 4\), model \(5, 4\)"):
        checkpoints.restore(1, ckpt_lib.abstract_like(wrong))
    checkpoints.close()


def test_mismatch_lists_every_offender_in_one_line():
    assert ckpt_lib.mismatch("f", "m", {"a": (2,)}, {"a": [2]}) is None
    error = ckpt_lib.mismatch(
        "ckpt", "the model", {"a": (2, 3), "b": (1,), "z": (4,)}, {"a": (3, 2), "b": (1,), "c": ()},
        problems=[("not floating point", ["b"])], hint="Try another.", limit=1)
    assert isinstance(error, ValueError)
    assert str(error) == ("ckpt does not fit the model: missing (1): c; unexpected (1): z; "
                          "wrong shape (1): a saved (2, 3), model (3, 2); "
                          "not floating point (1): b. Try another.")
    many = ckpt_lib.mismatch("ckpt", "m", {}, {k: (1,) for k in "abcd"}, limit=2)
    assert str(many) == "ckpt does not fit m: missing (4): a, b ... and 2 more"
