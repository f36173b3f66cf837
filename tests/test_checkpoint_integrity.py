"""Checkpoint integrity: every step carries a digest of its files; a damaged step (a file
that differs from the digest, that orbax cannot read, or non-finite values) is never
restored: the newest intact step is, with a warning naming the damage, and with no intact
step the restore is an error naming every damaged one. Most tests use a Checkpoints object
over a small pytree; the last two train the tiny synthetic model (resume, export)."""

import hashlib
import json
import logging
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import atjax
from atjax import checkpoint as ckpt_lib
from atjax import config as config_lib
from atjax import export as export_lib
from atjax import testing
from atjax import trainer as trainer_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
_BASE = np.random.default_rng(0).normal(size=(96, 96)).astype(np.float32)


def _state(step: int, w=None) -> dict:
    """The state saved at `step`: values that differ from step to step."""
    return {"w": jnp.asarray(_BASE * step if w is None else w),
            "b": jnp.full((16,), float(step), jnp.float32),
            "count": jnp.asarray(step, jnp.int32)}


def _assert_state_of(state, step: int) -> None:
    np.testing.assert_array_equal(np.asarray(state["w"]), _BASE * step)
    np.testing.assert_array_equal(np.asarray(state["b"]), np.full((16,), float(step)))
    assert int(state["count"]) == step


def _save(workdir, steps=(1, 2, 3), **states) -> ckpt_lib.Checkpoints:
    checkpoints = ckpt_lib.Checkpoints(workdir, keep=5, best_metric=None)
    for step in steps:
        checkpoints.save(step, states.get(f"s{step}") or _state(step),
                         {"hosts": [{"position": step}]}, force=True)
    checkpoints.close()
    return ckpt_lib.Checkpoints(workdir, keep=5, best_metric=None)


def _abstract():
    return ckpt_lib.abstract_like(_state(0))


def _largest_data_file(item: pathlib.Path) -> pathlib.Path:
    """The largest OCDBT data file (…/d/<hash>) under an orbax item directory."""
    return max((p for p in item.rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def _flip(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _damage(step_dir: pathlib.Path, kind: str) -> str:
    """Damages a step directory; returns the relative path of the damaged file (or "")."""
    if kind == "flip":
        path = _largest_data_file(step_dir / "state")
        _flip(path)
    elif kind == "manifest":
        path = step_dir / "state" / "manifest.ocdbt"
        path.unlink()
    elif kind == "input":
        path = step_dir / "input" / "metadata"
        path.write_bytes(b"\x00\x17garbage{[")
    elif kind == "truncate":
        path = _largest_data_file(step_dir / "state")
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == "empty":
        shutil.rmtree(step_dir)
        step_dir.mkdir()
        return ""
    else:
        raise AssertionError(kind)
    return path.relative_to(step_dir).as_posix()


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_each_step_has_a_digest_of_every_file(tmp_path):
    _save(tmp_path).close()
    for step in (1, 2, 3):
        step_dir = tmp_path / "checkpoints" / str(step)
        manifest = json.loads((step_dir / ckpt_lib.DIGEST_FILE).read_text())["files"]
        files = sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*")
                       if p.is_file() and p.name != ckpt_lib.DIGEST_FILE)
        assert sorted(manifest) == files and any(f.startswith("state/") for f in files)
        for name in files:
            data = (step_dir / name).read_bytes()
            assert manifest[name] == {"size": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}


def test_digests_with_retention_of_one(tmp_path, caplog):
    # Each save removes the step before it once written: its digest is written first.
    checkpoints = ckpt_lib.Checkpoints(tmp_path, keep=1, best_metric=None)
    with caplog.at_level(logging.WARNING):
        for step in (1, 2, 3):
            checkpoints.save(step, _state(step), {}, force=True)
        checkpoints.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3"]
    assert ckpt_lib.verify_digest(tmp_path / "checkpoints" / "3")
    assert "digest" not in _warnings(caplog)


CASES = [  # (damage, digest kept, what the warning says about step 3)
    ("flip", True, r"{file} does not match its SHA-256 digest"),
    ("manifest", True, r"{file} is missing"),
    ("manifest", False, r"orbax cannot read it"),
    ("input", True, r"{file} has 11 bytes, its digest says \d+"),
    ("input", False, r"orbax cannot read it"),
    ("truncate", True, r"{file} has \d+ bytes, its digest says \d+"),
    ("truncate", False, r"orbax cannot read it"),
    ("empty", True, r"its directory is empty"),
    ("empty", False, r"its directory is empty"),
]


@pytest.mark.parametrize("kind,digest,reason", CASES,
                         ids=[f"{k}-{'digest' if d else 'no-digest'}" for k, d, _ in CASES])
def test_damaged_latest_step_falls_back_to_the_newest_intact_one(tmp_path, caplog, kind,
                                                                 digest, reason):
    checkpoints = _save(tmp_path)
    if not digest:  # as an older atjax saved them
        for path in (tmp_path / "checkpoints").rglob(ckpt_lib.DIGEST_FILE):
            path.unlink()
    damaged = _damage(tmp_path / "checkpoints" / "3", kind)
    with caplog.at_level(logging.WARNING):
        # Not CheckpointMismatchError ("another model config"): the model is the same.
        step, state, input_state = checkpoints.restore_latest(_abstract())
    assert step == 2 and input_state == {"hosts": [{"position": 2}]}
    _assert_state_of(state, 2)
    warned = _warnings(caplog)
    assert re.search(r"step 3 in \S+checkpoints is damaged: "
                     + reason.format(file=re.escape(damaged)), warned), warned
    assert ("carries no digest" in warned) == (not digest)
    with pytest.raises(ckpt_lib.CheckpointDamagedError, match="step 3 in"):
        checkpoints.restore(3, _abstract())
    checkpoints.close()


def test_no_intact_step_is_an_error_naming_each(tmp_path):
    checkpoints = _save(tmp_path)
    files = {3: _damage(tmp_path / "checkpoints" / "3", "flip"),
             2: _damage(tmp_path / "checkpoints" / "2", "manifest"),
             1: _damage(tmp_path / "checkpoints" / "1", "truncate")}
    with pytest.raises(ckpt_lib.CheckpointDamagedError) as info:
        checkpoints.restore_latest(_abstract())
    message = str(info.value)
    assert message.startswith("no intact checkpoint in ") and "nothing restored" in message
    for step, name in files.items():
        assert f"step {step} in " in message and name in message
    checkpoints.close()


def test_non_finite_values_count_as_damage(tmp_path, caplog):
    w = _BASE * 3
    w[5, 7] = np.nan
    w[0, 0] = np.inf
    checkpoints = _save(tmp_path, s3=_state(3, w))
    assert ckpt_lib.verify_digest(tmp_path / "checkpoints" / "3")  # the files are as saved
    with caplog.at_level(logging.WARNING):
        step, state, _ = checkpoints.restore_latest(_abstract())
    assert step == 2
    _assert_state_of(state, 2)
    assert "step 3 in" in _warnings(caplog)
    assert "non-finite values in 1 leaves: ['w']" in _warnings(caplog)
    with pytest.raises(ckpt_lib.CheckpointDamagedError, match=r"non-finite values .*\['w'\]"):
        checkpoints.restore(3, _abstract())
    checkpoints.close()


def test_step_without_digest_restores_with_a_warning(tmp_path, caplog):
    checkpoints = _save(tmp_path, steps=(1, 2))
    for step in (1, 2):
        (tmp_path / "checkpoints" / str(step) / ckpt_lib.DIGEST_FILE).unlink()
        assert not ckpt_lib.verify_digest(tmp_path / "checkpoints" / str(step))
    with caplog.at_level(logging.WARNING):
        step, state, input_state = checkpoints.restore_latest(_abstract())
    assert step == 2 and input_state == {"hosts": [{"position": 2}]}
    _assert_state_of(state, 2)
    assert "step 2 in" in _warnings(caplog) and "carries no digest" in _warnings(caplog)
    checkpoints.close()


def test_damaged_steps_are_set_aside_for_the_resumed_run(tmp_path):
    checkpoints = _save(tmp_path)
    _damage(tmp_path / "checkpoints" / "3", "flip")
    step, _, _ = checkpoints.restore_latest(_abstract())
    checkpoints.set_aside_after(step)
    assert (tmp_path / "checkpoints" / "3.damaged" / "state").is_dir()
    assert checkpoints.latest_step() == 2
    # The run writes step 3 again, with its own digest.
    checkpoints.save(3, _state(30), {"hosts": [{"position": 3}]}, force=True)
    checkpoints.wait()
    assert ckpt_lib.verify_digest(tmp_path / "checkpoints" / "3")
    step, state, _ = checkpoints.restore_latest(_abstract())
    assert step == 3
    np.testing.assert_array_equal(np.asarray(state["w"]), _BASE * 30)
    checkpoints.close()
    reopened = ckpt_lib.Checkpoints(tmp_path, keep=5, best_metric=None)
    assert sorted(reopened.latest.all_steps()) == [1, 2, 3]
    reopened.close()


def test_best_step_has_a_digest_and_a_damaged_one_is_refused(tmp_path):
    checkpoints = ckpt_lib.Checkpoints(tmp_path, keep=2, best_metric="m")
    checkpoints.save_best(4, _state(4), {"hosts": [{"position": 4}]}, {"m": 0.5})
    checkpoints.close()
    step_dir = tmp_path / "best" / "4"
    assert ckpt_lib.verify_digest(step_dir)
    checkpoints = ckpt_lib.Checkpoints(tmp_path, keep=2, best_metric="m")
    state, _ = checkpoints.restore(4, _abstract(), best=True)
    _assert_state_of(state, 4)
    name = _damage(step_dir, "flip")
    with pytest.raises(ckpt_lib.CheckpointDamagedError,
                       match=rf"step 4 in \S+best is damaged: {name} does not match"):
        checkpoints.restore(4, _abstract(), best=True)
    checkpoints.close()


# End to end, on the tiny synthetic model: one run of 2 steps, copied for each test.

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("integrity") / "run"
    _trainer(workdir, 2).train()
    return workdir


def _trainer(workdir, steps):
    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny,head=mlp", [
        f"total_steps={steps}", "checkpoint_every_steps=1", "log_every_steps=1",
        "keep_checkpoints=3"])
    return trainer_lib.Trainer(config, workdir, progress=False,
                               input_factory=lambda config, **kw: testing.ArrayInput(**kw))


def _saved_arrays(step_dir: pathlib.Path) -> dict:
    """A step's train state as saved (numpy arrays by path), read without a target."""
    tree = ocp.PyTreeCheckpointer().restore(step_dir.absolute() / "state")
    return {"/".join(map(str, path)): np.asarray(x) for path, x in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("kind", ["flip", "manifest", "empty"])
def test_trainer_resumes_from_the_newest_intact_step(run, tmp_path, caplog, kind):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    original = _saved_arrays(workdir / "checkpoints" / "2")
    name = _damage(workdir / "checkpoints" / "2", kind)
    with caplog.at_level(logging.WARNING):
        result = _trainer(workdir, 2).train()  # neither garbage nor "another model config"
    assert result.step == 2
    assert (f"step 2 in {workdir.absolute()}/checkpoints is damaged: "
            f"{name or 'its directory is empty'}") in _warnings(caplog)
    # The damaged step is kept aside; the step written again is the one of the
    # uninterrupted run, bit for bit, and carries a digest.
    assert (workdir / "checkpoints" / "2.damaged").is_dir()
    assert ckpt_lib.verify_digest(workdir / "checkpoints" / "2")
    again = _saved_arrays(workdir / "checkpoints" / "2")
    assert sorted(again) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_bundle_has_a_digest_and_a_damaged_bundle_is_refused(run, tmp_path, caplog):
    bundle = export_lib.export(run, tmp_path / "bundle")
    assert ckpt_lib.verify_digest(bundle)
    data = _largest_data_file(bundle / "params")
    intact = data.read_bytes()
    _flip(data)
    name = data.relative_to(bundle).as_posix()
    with pytest.raises(ckpt_lib.CheckpointDamagedError,
                       match=rf"{bundle} is damaged: {name} does not match"):
        atjax.load(bundle)
    # A bundle of an older atjax, without a digest, loads with a warning.
    data.write_bytes(intact)
    (bundle / ckpt_lib.DIGEST_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        model = atjax.load(bundle)
    assert "carries no digest" in _warnings(caplog)
    assert np.isfinite(model.embed_text(["a dog barks"])).all()


def test_the_train_cli_names_a_workdir_without_an_intact_step(run, tmp_path, monkeypatch,
                                                              capsys):
    """`python -m atjax.train` on a workdir whose every step is damaged: one line naming
    the steps, exit 2, and the damaged steps left as they were (nothing trained over)."""
    import functools

    from atjax import train as train_cli

    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    for step in (1, 2):
        _damage(workdir / "checkpoints" / str(step), "flip")
    before = {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}
    monkeypatch.setattr(trainer_lib, "Trainer", functools.partial(
        trainer_lib.Trainer, input_factory=lambda config, **kw: testing.ArrayInput(**kw)))
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--config", f"{ROOT}/configs/synthetic.py:size=tiny,head=mlp",
                        "--workdir", str(workdir), "--no_progress", "--config.total_steps=3",
                        "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1, err
    assert "no intact checkpoint in" in errors[0]
    assert "step 1 in" in errors[0] and "step 2 in" in errors[0]
    after = {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}
    assert after == before
