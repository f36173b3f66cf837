"""The training loop's periodic actions on their own: metrics read one step late and
logged at every n-th and the last step, a non-finite loss named by its step, the best
state kept and early stopping after `patience` evaluations without improvement."""

import pathlib

import numpy as np
import pytest

from atjax import host_gc
from atjax import periodic


class _Writer:
    def __init__(self):
        self.records = []

    def write(self, step, metrics):
        self.records.append((step, dict(metrics)))


class _Saves:
    def __init__(self):
        self.calls = []

    def __call__(self, step):
        self.calls.append(("latest", step))

    def save_best(self, step, metrics):
        self.calls.append(("best", step, metrics))

    def confirm(self, *kinds):
        self.calls.append(("confirm",) + kinds)


def _log_metrics(writer, every=2, total_steps=5):
    progress = periodic.Progress(total_steps, 0, bar=False, report=False)
    return periodic.LogMetrics(writer, progress, host_gc.Pauses(), step=0, every=every,
                               total_steps=total_steps, batch_size=4,
                               schedule=lambda step: 0.1 * step, workdir=pathlib.Path("run"))


def _metrics(loss):
    return {"loss": np.float32(loss), "grad_norm": np.float32(1.0)}


def test_metrics_are_read_one_step_late_and_logged_every_nth_and_last_step():
    writer = _Writer()
    log = _log_metrics(writer)
    log.push(1, _metrics(1.0))
    log.push(2, _metrics(2.0))
    assert writer.records == []  # step 2 is read only once step 3 is dispatched
    log.push(3, _metrics(3.0))
    assert [s for s, _ in writer.records] == [2]
    log.push(4, _metrics(4.0))
    log.push(5, _metrics(5.0))
    log.flush()
    assert [s for s, _ in writer.records] == [2, 4, 5]
    step, record = writer.records[-1]
    assert record["loss"] == 5.0 and record["learning_rate"] == pytest.approx(0.4)
    assert record["examples_per_second"] > 0 and "gc_ms" in record
    log.flush()  # nothing left to read: no second record
    assert len(writer.records) == 3


def test_a_non_finite_gradient_norm_is_named_with_its_step():
    log = _log_metrics(_Writer())
    log.push(1, {"loss": np.float32(1.0), "grad_norm": np.float32(np.inf)})
    with pytest.raises(periodic.NonFiniteLossError, match="grad_norm inf at step 1"):
        log.flush()


def _evaluate(values, patience, saves, writer, mode="max"):
    it = iter(values)
    early = {"best_value": None, "evals_without_improvement": 0, "stopped_early": False,
             "best": {}}
    action = periodic.Evaluate(lambda: next(it), writer, saves, early, every=10,
                               total_steps=100, best_metric="R@1", best_mode=mode,
                               patience=patience)
    return action, early


def test_evaluations_keep_the_best_and_stop_after_patience_without_improvement():
    saves, writer = _Saves(), _Writer()
    action, early = _evaluate([{"val/R@1": v} for v in (0.5, 0.6, 0.55, 0.58)], 2, saves,
                              writer)
    assert [action.due(s) for s in (5, 10, 95, 100)] == [False, True, False, True]
    for step in (10, 20, 30):
        action(step)
        assert not action.stopped_early
    action(40)
    assert action.stopped_early and early["stopped_early"]
    assert early["best_value"] == 0.6 and early["evals_without_improvement"] == 2
    assert saves.calls == [("best", 10, {"R@1": 0.5}), ("best", 20, {"R@1": 0.6})]
    assert [s for s, _ in writer.records] == [10, 20, 30, 40]


def test_a_best_metric_the_evaluation_lacks_saves_then_names_the_metrics():
    saves = _Saves()
    action, _ = _evaluate([{"val/R@5": 0.5}], 0, saves, _Writer())
    with pytest.raises(ValueError, match=r"'R@1' is not among .*\['R@5'\]; step 10 is saved"):
        action(10)
    assert saves.calls == [("latest", 10), ("confirm", "latest")]


# The freeze collects: garbage that earlier tests left (orbax's unawaited reads) is
# reported here, not by this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_host_gc_freezes_again_after_the_first_step():
    with periodic.HostGC(step=7) as gc:
        assert [gc.due(s) for s in (7, 8, 9)] == [False, True, False]
        gc(8)
        assert host_gc.gc.get_freeze_count() > 0
    assert host_gc.gc.get_freeze_count() == 0
