"""The periodic actions of the training loop (atjax.trainer), one job each.

Each action says whether it is `due(step)` after a step and then does its job, so that the
loop itself only orders them: read and log the metrics one step late (`LogMetrics`), show
progress (`Progress`), validate and keep the best state, stopping early when it no longer
improves (`Evaluate`), save checkpoints (`SaveCheckpoint`), act on SIGTERM (`Preemption`),
keep the garbage collector off the loop (`HostGC`).
"""

from __future__ import annotations

import logging
import math
import pathlib
import signal
import time
from typing import Any, Callable

import jax
import numpy as np

from atjax import host_gc

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the message names the step and the OS error."""


def _every(step: int, every: int, total_steps: int) -> bool:
    """Every `every`-th step, and the last one (a run shorter than `every` still acts)."""
    return step % every == 0 or step == total_steps


class Progress:
    """A progress bar of the steps, or (without it: batch jobs, the cluster launchers) a log
    line per logged step on process 0, so that the log still shows how far training is and
    how fast it goes."""

    def __init__(self, total_steps: int, step: int, *, bar: bool, report: bool):
        self.total_steps = total_steps
        self.report = report
        self.bar = None
        if bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=step, desc="train", unit="step",
                            dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, step: int, values: dict[str, float]) -> None:
        rate = values["examples_per_second"]
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", ex_s=f"{rate:.1f}")
        elif self.report:
            log.info("step %d/%d: loss %.4f, %.1f examples/s, learning rate %.3g",
                     step, self.total_steps, values["loss"], rate, values["learning_rate"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LogMetrics:
    """Reads each step's metrics on the host one step late, so that the next step is
    dispatched before the host waits for this one, and logs those of every `every`-th step
    and the last. A non-finite loss or gradient norm raises NonFiniteLossError: a finite
    loss with non-finite gradients still poisons the parameters.

    The logged record adds the learning rate, the examples per second since the last
    logged step and the garbage collector's runs since then (`pauses`)."""

    def __init__(self, writer, progress: Progress, pauses: host_gc.Pauses, *, step: int,
                 every: int, total_steps: int, batch_size: int,
                 schedule: Callable[[int], float], workdir: pathlib.Path):
        self.writer, self.progress, self.pauses = writer, progress, pauses
        self.every, self.total_steps, self.batch_size = every, total_steps, batch_size
        self.schedule = schedule
        self.workdir = workdir
        self._pending = None  # (step, metrics on device) of the last step, not read yet
        self._logged_step, self._logged_time = step, time.perf_counter()

    def due(self, step: int) -> bool:
        return _every(step, self.every, self.total_steps) and step > self._logged_step

    def push(self, step: int, device_metrics: dict) -> None:
        """Reads the previous step's metrics (logging them if due), keeps this step's."""
        self.flush()
        self._pending = (step, device_metrics)

    def flush(self) -> None:
        """Reads the step not read yet, if any: before its state is evaluated or saved."""
        if self._pending is not None:
            step, device_metrics = self._pending
            self._pending = None
            self._read(step, device_metrics)

    def _read(self, step: int, device_metrics: dict) -> None:
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        for key in ("loss", "grad_norm"):
            if not math.isfinite(values[key]):
                raise NonFiniteLossError(
                    f"non-finite {key} {values[key]} at step {step}; the last "
                    f"checkpoint in {self.workdir / 'checkpoints'} is kept unchanged")
        if not self.due(step):
            return
        now = time.perf_counter()
        values["learning_rate"] = float(self.schedule(step - 1))
        values["examples_per_second"] = ((step - self._logged_step) * self.batch_size
                                         / (now - self._logged_time))
        values.update(self.pauses.take())
        self.writer.write(step, values)
        self._logged_step, self._logged_time = step, now
        self.progress.show(step, values)


class SaveCheckpoint:
    """Saves the train state with `extras()` (input positions, early-stopping state) every
    `every`-th step and the last, and the best state by validation on request; and turns a
    save that failed into CheckpointSaveError.

    Orbax writes in the background and keeps a failure until the next save asks: `poll()`
    asks, between steps, for each save that has ended. With several processes it does not:
    hosts that learnt of a failure at different steps would wait for each other in the
    step; they learn of it at the next save instead."""

    def __init__(self, checkpoints, state: Callable[[], Any], extras: Callable[[], dict], *,
                 every: int, total_steps: int):
        self.checkpoints = checkpoints
        self.state, self.extras = state, extras
        self.every, self.total_steps = every, total_steps
        self.polls = jax.process_count() == 1
        # The steps whose saves have not been confirmed yet, by manager ("latest", "best").
        self._unchecked: dict[str, int] = {}

    def due(self, step: int) -> bool:
        return _every(step, self.every, self.total_steps)

    def __call__(self, step: int) -> None:
        self._check("latest", wait=True)  # orbax's save waits for it anyway
        self.checkpoints.save(step, self.state(), self.extras(), force=True)
        self._unchecked["latest"] = step

    def save_best(self, step: int, metrics: dict[str, float]) -> None:
        if self.checkpoints.best is None:
            return
        self._check("best", wait=True)
        self.checkpoints.save_best(step, self.state(), self.extras(), metrics)
        self._unchecked["best"] = step

    def poll(self) -> None:
        if self.polls:
            self._check("latest", wait=False)
            self._check("best", wait=False)

    def confirm(self, *kinds: str) -> None:
        """Waits for the saves in flight of the `kinds` managers (both by default) and
        raises CheckpointSaveError if one failed."""
        for kind in kinds or ("latest", "best"):
            self._check(kind, wait=True)

    def _check(self, kind: str, *, wait: bool) -> None:
        """Raises CheckpointSaveError if the last save of the `kind` manager ("latest" or
        "best") failed. Without `wait`, a save still in flight is left to a later check."""
        step = self._unchecked.get(kind)
        if step is None:
            return
        manager = getattr(self.checkpoints, kind)
        if not wait and manager.is_saving_in_progress():
            return
        del self._unchecked[kind]
        directory = pathlib.Path(str(manager.directory))
        try:
            manager.wait_until_finished()  # raises what the background save met
        except Exception as e:  # noqa: BLE001 - an OSError mostly; orbax wraps some
            error = f"{type(e).__name__}: {e}"
        else:
            # best/ keeps the best by its metric, which need not be the step just saved.
            if kind == "best" or (directory / str(step)).is_dir():
                return
            error = f"orbax reported no error, but {directory / str(step)} is not there"
        kept = sorted(int(p.name) for p in directory.iterdir()
                      if p.name.isdigit() and int(p.name) != step) if directory.is_dir() else []
        raise CheckpointSaveError(
            f"saving the checkpoint of step {step} to {directory} failed ({error}); training "
            f"stopped. " + (f"The last checkpoint kept there is step {kept[-1]}: fix the "
                            f"cause (e.g. free disk space) and rerun with the same workdir "
                            f"to resume from it" if kept else
                            "No checkpoint is kept there: fix the cause (e.g. free disk "
                            "space) and rerun to start again"))


class Evaluate:
    """Validation every `every` steps and at the last (none when `every` is 0). With a
    `best_metric`, keeps the best state in best/ and counts the evaluations without
    improvement: `patience` of them in a row set `stopped_early`.

    `early` holds the best value, the count and the best evaluation's metrics; it is saved
    with every checkpoint, so a resumed run goes on counting where the interrupted one was.
    `evaluate()` returns the validation metrics ("val/..."), {} without an evaluator."""

    def __init__(self, evaluate: Callable[[], dict[str, float]], writer,
                 saves: SaveCheckpoint, early: dict, *, every: int, total_steps: int,
                 best_metric: str, best_mode: str, patience: int):
        self.evaluate, self.writer, self.saves, self.early = evaluate, writer, saves, early
        self.every, self.total_steps = every, total_steps
        self.best_metric, self.best_mode, self.patience = best_metric, best_mode, patience
        self.stopped_early = False

    def due(self, step: int) -> bool:
        return bool(self.every) and _every(step, self.every, self.total_steps)

    def __call__(self, step: int) -> None:
        val = self.evaluate()
        if not val:
            return
        self.writer.write(step, val)
        if not self.best_metric:
            return
        key = f"val/{self.best_metric}"
        if key not in val:
            self.saves(step)  # keep the progress, then say why
            self.saves.confirm("latest")
            raise ValueError(
                f"best_metric={self.best_metric!r} is not among the evaluation's metrics "
                f"{sorted(k[4:] for k in val)}; step {step} is saved, so a run with the name "
                "corrected resumes from it")
        early, best = self.early, self.early["best_value"]
        improved = best is None or (val[key] > best if self.best_mode == "max"
                                    else val[key] < best)
        if improved:
            early.update(best_value=val[key], evals_without_improvement=0, best=val)
        else:
            early["evals_without_improvement"] += 1
        if self.patience and early["evals_without_improvement"] >= self.patience:
            log.info("early stopping at step %d: no improvement of %s in %d evaluations",
                     step, self.best_metric, early["evals_without_improvement"])
            self.stopped_early = early["stopped_early"] = True
        if improved:  # best/ keeps one: a worse state is not written
            self.saves.save_best(step, {self.best_metric: val[key]})


class Preemption:
    """Turns SIGTERM into a flag that is due at the next step boundary (save, then exit)."""

    def __init__(self, sync_every: int = 1):
        self.requested = False
        self._previous = None
        # Across hosts the flag needs an all-gather: a host round trip that the training
        # loop should not pay every step, so hosts agree only every `sync_every` steps.
        self.sync_every = max(1, int(sync_every))

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker)
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def due(self, step: int) -> bool:
        """A collective with several processes: every process asks at every step."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        # The coordination service's own preemption notice: checked every step (it is a
        # local lookup of a step the hosts already agreed on).
        if multihost_utils.reached_preemption_sync_point(step):
            return True
        if step % self.sync_every:
            return False
        # Our SIGTERM flag: every host must agree, or the collective save would deadlock.
        flag = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flag))


class HostGC:
    """Keeps the collector's full runs, which would stall the host between steps
    (atjax.host_gc), off the loop: what exists on entry (libraries, model, state) is
    exempted, again after the first step's compilation (`due` at that step), and the
    runs that still happen are counted in `pauses`, which LogMetrics logs."""

    def __init__(self, step: int):
        self.first_step = step + 1
        self.pauses = host_gc.Pauses()

    def __enter__(self) -> "HostGC":
        host_gc.freeze()
        self.pauses.install()
        return self

    def due(self, step: int) -> bool:
        return step == self.first_step

    def __call__(self, step: int) -> None:
        host_gc.freeze()

    def __exit__(self, *exc) -> None:
        self.pauses.remove()
        host_gc.thaw()
