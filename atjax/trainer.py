"""The one trainer behind every experiment: InfoNCE training of the dual encoder,
data-parallel over every device of every host, with checkpoints, validation, early
stopping, preemption handling and metrics logging.

The loop follows nanodo: step N+1 is dispatched before step N's metrics are read on the
host, so the accelerator never waits for Python. Checkpoints are written only for states
whose loss is known to be finite.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import signal
import time
from typing import Callable, Protocol

import jax
import ml_collections
import numpy as np

from atjax import checkpoint as ckpt_lib
from atjax import config as config_lib
from atjax import folder_lock
from atjax import host_gc
from atjax import inference
from atjax import model as model_lib
from atjax import sharding
from atjax import train_step as step_lib


class TrainInputProtocol(Protocol):
    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


InputFactory = Callable[..., TrainInputProtocol]


class NonFiniteLossError(FloatingPointError):
    pass


class WorkdirBusyError(RuntimeError):
    """Another trainer holds the workdir's lock; the message names its PID."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the message names the step and the OS error."""


# In the workdir: flock'ed by the trainer that writes it (atjax.folder_lock).
LOCK_NAME = "train.lock"


def default_input_factory(config, *, batch_size, sample_rate, clip_samples, chunk_samples,
                          tokenizer, seed, process_index, process_count):
    # Lazy: the input pipeline is the only part of training that needs TensorFlow.
    from data_pipeline import pipeline

    return pipeline.TrainInput(
        config.data, batch_size=batch_size, sample_rate=sample_rate,
        clip_samples=clip_samples, chunk_samples=chunk_samples, tokenizer=tokenizer,
        seed=seed, process_index=process_index, process_count=process_count)


def tensorboard_tag(name: str) -> str:
    """A metric name as a TensorBoard tag, which allows only letters, digits and "_-./":
    "R@10" becomes "R_at_10", anything else illegal "_" (metrics.jsonl keeps the name)."""
    return "".join(ch if ch.isalnum() or ch in "_-./" else ("_at_" if ch == "@" else "_")
                   for ch in name)


class MetricsWriter:
    """metrics.jsonl (one object per logged step) + TensorBoard summaries, on process 0.

    `resume_step`: the step a run starts from (0 without a checkpoint). What an
    interrupted run logged after it is dropped first, from metrics.jsonl and (through
    TensorBoard's `purge_step`) from the summaries: those steps are logged again, and no
    step appears twice."""

    def __init__(self, workdir: pathlib.Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self._tb = None
        if enabled:
            path = workdir / "metrics.jsonl"
            if path.exists():
                _drop_records_after(path, resume_step)
            self._file = open(path, "a")
            try:
                from tensorboardX import SummaryWriter
                # TensorBoard's reader discards the earlier events of steps >= purge_step.
                self._tb = SummaryWriter(str(workdir / "tensorboard"),
                                         purge_step=resume_step + 1)
            except ImportError:  # TensorBoard summaries are a convenience, not a requirement
                logging.warning("tensorboardX not installed: no TensorBoard summaries")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(tensorboard_tag(k), float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def _drop_records_after(path: pathlib.Path, step: int) -> None:
    """Rewrites metrics.jsonl without the records of steps after `step` (atomically)."""
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            later = json.loads(line)["step"] > step
        except (ValueError, KeyError, TypeError):  # a torn last line of a killed run
            later = True
        if later:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(path)
        logging.info("metrics.jsonl: dropped %d records after step %d (logged again)", dropped,
                     step)


def _gather_json(value) -> list:
    """`value` (JSON-serialisable) of every process, by process index. A collective: every
    process calls it at the same point."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(gathered[i, :sizes[i]].tobytes()) for i in range(len(sizes))]


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (save, then exit)."""

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
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, step: int) -> bool:
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


class _HeldLock:
    """A lock's descriptor (atjax.folder_lock), closed by release() or when dropped."""

    def __init__(self, fd: int):
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.release()


def check_workdir(workdir) -> None:
    """A workdir is a file-system path: pathlib would make "gs://b/x" a local folder
    "gs:/b/x" on every host."""
    if "://" in str(workdir):
        raise ValueError(f"workdir {str(workdir)!r} is a URL; atjax writes its workdir through "
                         "the file system: mount the bucket (e.g. gcsfuse) or use a shared "
                         "file system path that every host sees")


@dataclasses.dataclass
class TrainResult:
    step: int
    stopped_early: bool
    preempted: bool
    best: dict[str, float]


class Trainer:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                 input_factory: InputFactory = default_input_factory,
                 evaluate_fn: Callable[[inference.Embedder], dict[str, float]] | None = None,
                 progress: bool = True):
        config_lib.check_train_config(config)
        self.config = config
        check_workdir(workdir)
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mesh = sharding.make_mesh()
        self.local_batch = sharding.check_batch_size(config.batch_size, self.mesh)
        self.is_main = jax.process_index() == 0
        self.progress = progress and self.is_main
        evaluates = bool(config.eval_every_steps) and evaluate_fn is not None
        if config.early_stopping_patience and not (evaluates and config.best_metric):
            raise ValueError("early_stopping_patience needs evaluations (eval_every_steps and "
                             "evals) and a best_metric to watch")
        if config.best_metric and not evaluates:
            logging.warning("best_metric=%r but no evaluations run (eval_every_steps=%s, %s "
                            "evaluator): no best checkpoint will be kept", config.best_metric,
                            config.eval_every_steps, "an" if evaluate_fn else "no")
        # The steps whose saves have not been confirmed yet, by manager ("latest", "best").
        self._unchecked_saves: dict[str, int] = {}
        # Taken before anything is written to the workdir (config.json, orbax's folders)
        # and held until train() ends.
        self._workdir_lock: _HeldLock | None = None
        self._locked = False
        self._lock_workdir()
        try:
            self._setup(input_factory, evaluate_fn)
        except BaseException:
            self._unlock_workdir()
            raise

    def _setup(self, input_factory: InputFactory,
               evaluate_fn: Callable[[inference.Embedder], dict[str, float]] | None) -> None:
        config = self.config
        # What a fresh run creates here, removed again if the set-up fails (a text folder
        # that does not fit the config, say): a refused run leaves no half-started workdir.
        fresh = [p for p in (self.workdir / "checkpoints", self.workdir / "best",
                             self.workdir / "config.json") if not p.exists()]
        self.checkpoints = ckpt_lib.Checkpoints(
            self.workdir, keep=config.keep_checkpoints,
            best_metric=config.best_metric or None, best_mode=config.best_mode)
        self.resume_step = self.checkpoints.latest_step()
        try:
            self._build(input_factory, evaluate_fn)
        except BaseException:
            self.checkpoints.close()
            if self.resume_step is None and self.is_main:
                for path in fresh:
                    if path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
                    elif path.is_file():
                        path.unlink()
            raise

    def _build(self, input_factory: InputFactory,
               evaluate_fn: Callable[[inference.Embedder], dict[str, float]] | None) -> None:
        config = self.config
        m = config.model
        # A resumed run writes config.json once its checkpoint has been restored, so that a
        # run started with a config that does not fit leaves the workdir's config intact.
        # A fresh one writes it once the model and its pretrained weights are in place.
        # Best value and patience, saved with every checkpoint: a resumed run goes on
        # counting where the interrupted one was, and one that stopped early stays stopped.
        self.early = {"best_value": None, "evals_without_improvement": 0,
                      "stopped_early": False, "best": {}}
        model = model_lib.build(m, seed=config.seed)
        if self.resume_step is None:
            model_lib.load_pretrained(model, m)  # a resumed run has these in its checkpoint
        self.tokenizer = model_lib.make_tokenizer(m)
        if self.resume_step is None:
            self._write_config()
        self.train_def, self.eval_def, params, batch_stats, self.rest = \
            step_lib.split_model(model)
        self.tx = step_lib.make_optimizer(config, params)
        replicated = sharding.replicated(self.mesh)
        self.copies_dtype = step_lib.copies_dtype(config)
        state = step_lib.init_state(params, batch_stats, self.tx, self.copies_dtype)
        self.state = sharding.replicate(state, self.mesh)
        self.rest = sharding.replicate(self.rest, self.mesh)
        self.base_key = sharding.replicate(step_lib.base_key(config), self.mesh)
        self.step_fn = step_lib.jit_train_step(
            self.train_def, self.tx, replicated, sharding.batch_sharded(self.mesh), replicated)

        self.input = input_factory(
            config, batch_size=self.local_batch, sample_rate=m.audio.frontend.sample_rate,
            clip_samples=model_lib.clip_samples(m), chunk_samples=model_lib.chunk_samples(m),
            tokenizer=self.tokenizer, seed=config.seed,
            process_index=jax.process_index(), process_count=jax.process_count())
        self.evaluate_fn = evaluate_fn

    def _lock_workdir(self) -> None:
        """Takes the workdir's lock, or raises WorkdirBusyError naming the trainer that
        holds it. Process 0 alone locks: the hosts share the workdir, and one lock file
        keeps a second job out whichever hosts it runs on. A collective: every process
        learns the outcome and refuses with process 0, instead of waiting for it in the
        next collective."""
        refusal = None
        if self.is_main:
            path = self.workdir / LOCK_NAME
            try:
                self._workdir_lock = _HeldLock(folder_lock.lock(path))
            except folder_lock.LockHeldError as e:
                refusal = (f"workdir {self.workdir} is in use by another trainer ({e.holder}, "
                           f"holding {path}): wait for it to end, or train in another workdir")
            except OSError as e:
                if e.errno not in folder_lock.UNSUPPORTED:
                    refusal = f"cannot lock the workdir: {path}: {e}"
                else:  # e.g. Lustre mounted without flock: train, but say what is lost
                    logging.warning("%s: the file system has no locks (%s); nothing keeps a "
                                    "second trainer out of this workdir", path, e.strerror)
        refusal = _gather_json(refusal)[0]
        if refusal is not None:
            raise WorkdirBusyError(refusal)
        self._locked = True

    def _unlock_workdir(self) -> None:
        if self._workdir_lock is not None:
            self._workdir_lock.release()
            self._workdir_lock = None
        self._locked = False

    def _write_config(self) -> None:
        if self.is_main:
            (self.workdir / "config.json").write_text(self.config.to_json_best_effort(indent=2))

    def embedder(self) -> inference.Embedder:
        return inference.Embedder(self.config, self.eval_def, self.state.params,
                                  self.state.batch_stats, self.rest, self.tokenizer)

    def _restore(self) -> int:
        if self.resume_step is None:
            return 0
        abstract = ckpt_lib.abstract_like(step_lib.without_copies(self.state))
        # The newest intact step; each newer, damaged one is named in a warning. With no
        # intact step, CheckpointDamagedError names them all: nothing is trained over them.
        self.resume_step, state, saved = self.checkpoints.restore_latest(abstract)
        self.state = step_lib.with_copies(state, self.copies_dtype)
        if "hosts" in saved:
            hosts = saved["hosts"]
            if len(hosts) != jax.process_count():
                raise ValueError(
                    f"step {self.resume_step} in {self.workdir} was saved by {len(hosts)} "
                    f"processes; resume it with {len(hosts)} (each holds its own input "
                    f"position), not {jax.process_count()}")
            self.input.set_state(hosts[jax.process_index()])
            self.early.update(saved.get("trainer", {}))
        else:  # saved before per-process positions: one process's state, nothing else
            self.input.set_state(saved)
        # The damaged steps after it make way for the ones this run writes.
        self.checkpoints.set_aside_after(self.resume_step)
        self._write_config()
        logging.info("resuming from step %d", self.resume_step)
        return self.resume_step

    def _checkpoint_extras(self) -> dict:
        """What a checkpoint holds beside the train state: every process's input position
        (each host reads its own share of the data) and the early-stopping state. A
        collective across processes."""
        return {"hosts": _gather_json(self.input.get_state()), "trainer": dict(self.early)}

    def _save(self, step: int, *, force: bool = False) -> None:
        self._check_save("latest", wait=True)  # orbax's save waits for it anyway
        self.checkpoints.save(step, step_lib.without_copies(self.state),
                              self._checkpoint_extras(), force=force)
        self._unchecked_saves["latest"] = step

    def _save_best(self, step: int, metrics: dict[str, float]) -> None:
        if self.checkpoints.best is None:
            return
        self._check_save("best", wait=True)
        self.checkpoints.save_best(step, step_lib.without_copies(self.state),
                                   self._checkpoint_extras(), metrics)
        self._unchecked_saves["best"] = step

    def _check_save(self, kind: str, *, wait: bool) -> None:
        """Raises CheckpointSaveError if the last save of the `kind` manager ("latest" or
        "best") failed. Orbax writes in the background and keeps a failure until the next
        save asks; this asks as soon as the save is over. Without `wait`, a save still in
        flight is left to a later check."""
        step = self._unchecked_saves.get(kind)
        if step is None:
            return
        manager = getattr(self.checkpoints, kind)
        if not wait and manager.is_saving_in_progress():
            return
        del self._unchecked_saves[kind]
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

    def _evaluate(self, step: int) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        start = time.perf_counter()
        metrics = {f"val/{k}": float(v) for k, v in self.evaluate_fn(self.embedder()).items()}
        metrics["val/seconds"] = time.perf_counter() - start
        # Every process evaluates; process 0's figures decide for all, so that the best
        # checkpoint and early stopping (collective saves, a common last step) agree even
        # where two hosts' sums round differently.
        return _gather_json(metrics)[0]

    def train(self) -> TrainResult:
        if not self._locked:  # a second train() of this Trainer
            self._lock_workdir()
        try:
            # The handler goes in before the restore: a SIGTERM while restoring or
            # compiling the first step is acted on at the first step's boundary.
            with _Preemption(sync_every=self.config.log_every_steps) as preemption:
                return self._train(preemption)
        finally:
            self._unlock_workdir()  # after the saves in flight: _train waits for them

    def _train(self, preemption: _Preemption) -> TrainResult:
        c = self.config
        step = self._restore()
        early = self.early
        if early["stopped_early"]:
            logging.info("%s stopped early at step %d; nothing to do", self.workdir, step)
            self.checkpoints.close()
            return TrainResult(step=step, stopped_early=True, preempted=False,
                               best=dict(early["best"]))
        writer = MetricsWriter(self.workdir, self.is_main, resume_step=step)
        schedule = step_lib.learning_rate_schedule(c)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=c.total_steps, initial=step, desc="train", unit="step",
                       dynamic_ncols=True)
        stopped_early, preempted = False, False
        pending = None  # (step, metrics on device) of the previous step, read one step late
        clock = {"time": time.perf_counter(), "step": step}  # of the last logged step

        def check(entry) -> dict[str, float]:
            done_step, device_metrics = entry
            values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
            # A finite loss with non-finite gradients still poisons the parameters.
            for key in ("loss", "grad_norm"):
                if not math.isfinite(values[key]):
                    raise NonFiniteLossError(
                        f"non-finite {key} {values[key]} at step {done_step}; the last "
                        f"checkpoint in {self.workdir / 'checkpoints'} is kept unchanged")
            return values

        def flush(entry) -> None:
            """Reads a finished step's metrics (an error if not finite) and logs them if
            the step is a logging step."""
            values = check(entry)
            done = entry[0]
            # Every log_every_steps-th step, and the last one (a run shorter than
            # log_every_steps still logs).
            if (done % c.log_every_steps and done != c.total_steps) or done <= clock["step"]:
                return
            now = time.perf_counter()
            rate = (done - clock["step"]) * c.batch_size / (now - clock["time"])
            values["learning_rate"] = float(schedule(done - 1))
            values["examples_per_second"] = rate
            values.update(pauses.take())
            writer.write(done, values)
            clock.update(time=now, step=done)
            if bar is not None:
                bar.set_postfix(loss=f"{values['loss']:.4f}", ex_s=f"{rate:.1f}")
            elif self.is_main:
                # Without the bar (--no_progress: batch jobs, the cluster launchers) the
                # log still shows how far training is and how fast it goes.
                logging.info("step %d/%d: loss %.4f, %.1f examples/s, learning rate %.3g",
                             done, c.total_steps, values["loss"], rate,
                             values["learning_rate"])

        # The collector's full runs would stall the host between steps (atjax.host_gc):
        # what exists now (libraries, model, state) is exempted, again after the first
        # step's compilation, and the runs that still happen are logged.
        host_gc.freeze()
        pauses = host_gc.Pauses()
        pauses.install()
        first_step = step
        # A save that failed in the background stops the run at the next step boundary
        # after it ended. With several processes, at the next save instead: hosts that
        # learnt of it at different steps would wait for each other in the step.
        poll_saves = jax.process_count() == 1
        try:
            while step < c.total_steps:
                if poll_saves:
                    self._check_save("latest", wait=False)
                    self._check_save("best", wait=False)
                batch = sharding.global_batch(next(self.input), self.mesh)
                self.state, metrics = self.step_fn(self.state, batch, self.rest,
                                                   self.base_key)
                step += 1
                if step == first_step + 1:
                    host_gc.freeze()
                if pending is not None:
                    flush(pending)
                pending = (step, metrics)
                if bar is not None:
                    bar.update(1)

                eval_now = c.eval_every_steps and (step % c.eval_every_steps == 0
                                                   or step == c.total_steps)
                save_now = step % c.checkpoint_every_steps == 0 or step == c.total_steps
                stop_now = preemption.reached(step)
                if eval_now or save_now or stop_now:
                    # Never checkpoint or evaluate a non-finite state; and a checkpointed
                    # step's metrics are logged before it is saved, so that a run resumed
                    # from it lacks none.
                    flush(pending)
                    pending = None
                if eval_now:
                    val = self._evaluate(step)
                    if val:
                        writer.write(step, val)
                        key = f"val/{c.best_metric}" if c.best_metric else None
                        if key is not None and key not in val:
                            self._save(step, force=True)  # keep the progress, then say why
                            self._check_save("latest", wait=True)
                            raise ValueError(
                                f"best_metric={c.best_metric!r} is not among the evaluation's "
                                f"metrics {sorted(k[4:] for k in val)}; step {step} is saved, "
                                "so a run with the name corrected resumes from it")
                        if key is not None:
                            best = early["best_value"]
                            improved = best is None or (val[key] > best if c.best_mode == "max"
                                                        else val[key] < best)
                            if improved:
                                early.update(best_value=val[key], evals_without_improvement=0,
                                             best=val)
                            else:
                                early["evals_without_improvement"] += 1
                            if (c.early_stopping_patience and early["evals_without_improvement"]
                                    >= c.early_stopping_patience):
                                logging.info("early stopping at step %d: no improvement of "
                                             "%s in %d evaluations", step, c.best_metric,
                                             early["evals_without_improvement"])
                                stopped_early = early["stopped_early"] = True
                            if improved:  # best/ keeps one: a worse state is not written
                                self._save_best(step, {c.best_metric: val[key]})
                if save_now or stop_now or stopped_early:
                    self._save(step, force=True)
                if stop_now:
                    preempted = True
                    break
                if stopped_early:
                    break
            if pending is not None:
                flush(pending)
            # The last saves (the final step's, a preempted or an early-stopped run's) are
            # confirmed before the run reports its end.
            self._check_save("latest", wait=True)
            self._check_save("best", wait=True)
        finally:
            pauses.remove()
            host_gc.thaw()
            self.checkpoints.wait()
            writer.close()
            if bar is not None:
                bar.close()
        self.checkpoints.close()
        return TrainResult(step=step, stopped_early=stopped_early, preempted=preempted,
                           best=dict(early["best"]))
