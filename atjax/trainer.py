"""The one trainer behind every experiment: InfoNCE training of the dual encoder,
data-parallel over every device of every host, with checkpoints, validation, early
stopping, preemption handling and metrics logging.

The loop follows nanodo: step N+1 is dispatched before step N's metrics are read on the
host, so the accelerator never waits for Python. Checkpoints are written only for states
whose loss is known to be finite. Each periodic job (metrics, progress, validation with
the best state and early stopping, checkpoints, preemption, the garbage collector) is an
action of atjax.periodic that says when it is due; the loop only orders them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Callable, Protocol

import jax
import ml_collections
import numpy as np
from flax import nnx

from atjax import checkpoint as ckpt_lib
from atjax import config as config_lib
from atjax import folder_lock
from atjax import inference
from atjax import model as model_lib
from atjax import periodic
from atjax import sharding
from atjax import text_features
from atjax import train_step as step_lib

log = logging.getLogger(__name__)


class TrainInputProtocol(Protocol):
    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


InputFactory = Callable[..., TrainInputProtocol]


class WorkdirBusyError(RuntimeError):
    """Another trainer holds the workdir's lock; the message names its PID."""


# Raised by the loop's actions (atjax.periodic); callers catch them here.
NonFiniteLossError = periodic.NonFiniteLossError
CheckpointSaveError = periodic.CheckpointSaveError

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
                log.warning("tensorboardX not installed: no TensorBoard summaries")

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
        log.info("metrics.jsonl: dropped %d records after step %d (logged again)", dropped,
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
        ckpt_lib.check_workdir(workdir)
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
            log.warning("best_metric=%r but no evaluations run (eval_every_steps=%s, %s "
                            "evaluator): no best checkpoint will be kept", config.best_metric,
                            config.eval_every_steps, "an" if evaluate_fn else "no")
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
        self.saves = periodic.SaveCheckpoint(
            self.checkpoints, lambda: step_lib.without_copies(self.state),
            self._checkpoint_extras, every=config.checkpoint_every_steps,
            total_steps=config.total_steps)
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
                    log.warning("%s: the file system has no locks (%s); nothing keeps a "
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

    def _text_cache(self) -> text_features.FeatureCache | None:
        """The frozen text encoder's feature cache (`model.text.feature_cache`), from the
        restored weights; None when the step runs the encoder itself."""
        capacity = self.config.model.text.get("feature_cache", 0)
        if not capacity:
            return None
        model = nnx.merge(self.eval_def, self.state.params, self.state.batch_stats, self.rest)
        return text_features.FeatureCache(model.text_encoder, capacity=capacity,
                                          bucket=self.local_batch)

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
        log.info("resuming from step %d", self.resume_step)
        return self.resume_step

    def _checkpoint_extras(self) -> dict:
        """What a checkpoint holds beside the train state: every process's input position
        (each host reads its own share of the data) and the early-stopping state. A
        collective across processes."""
        return {"hosts": _gather_json(self.input.get_state()), "trainer": dict(self.early)}

    def _evaluate(self) -> dict[str, float]:
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
            with periodic.Preemption(sync_every=self.config.log_every_steps) as preemption:
                return self._train(preemption)
        finally:
            self._unlock_workdir()  # after the saves in flight: _train waits for them

    def _next_batch(self, text_cache: text_features.FeatureCache | None):
        local = next(self.input)
        if text_cache is not None:
            local = text_cache(local)
        return sharding.global_batch(local, self.mesh)

    def _train(self, preemption: periodic.Preemption) -> TrainResult:
        c = self.config
        step = self._restore()
        early = self.early
        if early["stopped_early"]:
            log.info("%s stopped early at step %d; nothing to do", self.workdir, step)
            self.checkpoints.close()
            return TrainResult(step=step, stopped_early=True, preempted=False,
                               best=dict(early["best"]))
        writer = MetricsWriter(self.workdir, self.is_main, resume_step=step)
        text_cache = self._text_cache()
        saves = self.saves
        preempted = False
        with contextlib.ExitStack() as cleanup:
            progress = periodic.Progress(c.total_steps, step, bar=self.progress,
                                         report=self.is_main)
            cleanup.callback(progress.close)
            cleanup.callback(writer.close)
            cleanup.callback(self.checkpoints.wait)
            gc = cleanup.enter_context(periodic.HostGC(step))
            metrics_log = periodic.LogMetrics(
                writer, progress, gc.pauses, step=step, every=c.log_every_steps,
                total_steps=c.total_steps, batch_size=c.batch_size,
                schedule=step_lib.learning_rate_schedule(c), workdir=self.workdir)
            evaluate = periodic.Evaluate(
                self._evaluate, writer, saves, early, every=c.eval_every_steps,
                total_steps=c.total_steps, best_metric=c.best_metric,
                best_mode=c.best_mode, patience=c.early_stopping_patience)
            while step < c.total_steps:
                saves.poll()
                self.state, metrics = self.step_fn(self.state, self._next_batch(text_cache),
                                                   self.rest, self.base_key)
                step += 1
                if gc.due(step):
                    gc(step)
                metrics_log.push(step, metrics)
                progress.advance()
                evaluating, saving, stopping = (evaluate.due(step), saves.due(step),
                                                preemption.due(step))
                if evaluating or saving or stopping:
                    # Never checkpoint or evaluate a non-finite state; and a checkpointed
                    # step's metrics are logged before it is saved, so that a run resumed
                    # from it lacks none.
                    metrics_log.flush()
                if evaluating:
                    evaluate(step)
                if saving or stopping or evaluate.stopped_early:
                    saves(step)
                if stopping or evaluate.stopped_early:
                    preempted = stopping
                    break
            metrics_log.flush()
            if text_cache is not None and self.is_main:
                log.info("text features: %d distinct captions encoded, %d reused",
                         text_cache.misses, text_cache.hits)
            # The last saves (the final step's, a preempted or an early-stopped run's) are
            # confirmed before the run reports its end.
            saves.confirm()
        self.checkpoints.close()
        return TrainResult(step=step, stopped_early=evaluate.stopped_early,
                           preempted=preempted, best=dict(early["best"]))
