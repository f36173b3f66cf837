"""What a run keeps across interruptions besides its weights: the best value and the
early-stopping patience, the best checkpoint (and its export), an unduplicated metrics
log, and its config.json; and the errors that a misnamed best_metric or a checkpoint of
another model give. In-process Trainers on the tiny synthetic config with ArrayInput."""

import json
import pathlib

import pytest

from atjax import checkpoint as ckpt_lib
from atjax import config as config_lib
from atjax import export as export_lib
from atjax import testing
from atjax import trainer as trainer_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The scripted validation metric by step: best at step 2, then worse and worse.
SCRIPT = {1: 0.5, 2: 0.9, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.5, 7: 0.4, 8: 0.3}


class Crash(RuntimeError):
    pass


def _trainer(workdir, steps, *overrides, crash_at=None):
    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny,head=mlp", [
        f"total_steps={steps}", "checkpoint_every_steps=1", "log_every_steps=1",
        "eval_every_steps=1", "best_metric=m", "best_mode=max", "early_stopping_patience=2",
        *overrides])

    class Input(testing.ArrayInput):
        def __next__(self):
            if crash_at is not None and self.position + 1 == crash_at:
                raise Crash(f"input failed before step {crash_at}")
            return super().__next__()

    holder = {}

    def evaluate(_embedder):
        return {"m": SCRIPT[int(holder["trainer"].state.step)], "other": 1.0}

    trainer = trainer_lib.Trainer(config, workdir, progress=False, evaluate_fn=evaluate,
                                  input_factory=lambda config, **kw: Input(**kw))
    holder["trainer"] = trainer
    return trainer


def _logged_steps(workdir) -> list[int]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


@pytest.mark.slow
def test_early_stopping_survives_a_crash_and_a_rerun(tmp_path):
    workdir = tmp_path / "run"
    # Uninterrupted, the metric peaks at step 2 and the run stops at step 4 (two worse
    # evaluations). Here the input fails before step 4: checkpoint 3 holds one worse
    # evaluation, and the resumed run must stop at step 4 too, best still step 2's 0.9.
    with pytest.raises(Crash):
        _trainer(workdir, 8, crash_at=4).train()
    result = _trainer(workdir, 8).train()
    assert (result.step, result.stopped_early) == (4, True)
    assert result.best["val/m"] == 0.9
    assert _logged_steps(workdir) == [1, 2, 3, 4]  # each step once, though 3 ran twice
    # A run that stopped early stays stopped when started again.
    again = _trainer(workdir, 8).train()
    assert (again.step, again.stopped_early, again.best["val/m"]) == (4, True, 0.9)
    assert _logged_steps(workdir) == [1, 2, 3, 4]
    # The best checkpoint is step 2's, and export (the README's command) takes it.
    bundle = export_lib.export(workdir, tmp_path / "bundle")
    assert json.loads((bundle / export_lib.MARKER).read_text())["step"] == 2


def test_metrics_of_steps_after_the_checkpoint_are_logged_once(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(Crash):
        _trainer(workdir, 6, "checkpoint_every_steps=2", "early_stopping_patience=0",
                 crash_at=4).train()
    assert _logged_steps(workdir)[-1] == 3  # step 3 logged, its checkpoint never written
    result = _trainer(workdir, 6, "checkpoint_every_steps=2", "early_stopping_patience=0").train()
    assert result.step == 6
    assert _logged_steps(workdir) == [1, 2, 3, 4, 5, 6]
    val_steps = [json.loads(line)["step"] for line in
                 (workdir / "metrics.jsonl").read_text().splitlines() if "val/m" in line]
    assert val_steps == [1, 2, 3, 4, 5, 6]


def test_misnamed_best_metric_saves_then_names_the_metrics(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"best_metric='mm' is not among .*\['m', 'other', "
                                         r"'seconds'\]; step 1 is saved"):
        _trainer(workdir, 4, "best_metric=mm", "checkpoint_every_steps=100").train()
    checkpoints = ckpt_lib.Checkpoints(workdir, keep=2, best_metric=None)
    assert checkpoints.latest_step() == 1
    checkpoints.close()


def test_patience_without_evaluations_is_refused(tmp_path):
    with pytest.raises(ValueError, match="early_stopping_patience needs evaluations"):
        _trainer(tmp_path / "run", 4, "eval_every_steps=0")


def test_checkpoint_of_another_model_is_named_and_config_kept(tmp_path):
    workdir = tmp_path / "run"
    _trainer(workdir, 1, "early_stopping_patience=0").train()
    saved_config = (workdir / "config.json").read_text()
    other = _trainer(workdir, 2, "early_stopping_patience=0", "model.embed_dim=48")
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"step 1 in .* does not fit the model.*saved \(64,\), model "
                             r"\(48,\).*resume it with the config.json beside it"):
        other.train()
    assert (workdir / "config.json").read_text() == saved_config
    # The run is intact: its own config resumes it.
    assert _trainer(workdir, 2, "early_stopping_patience=0").train().step == 2
