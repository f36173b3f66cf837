"""The trainer end to end on CPU: sharding, multi-process, resume, NaN, preemption, export;
the workdir's lock, failed saves, checkpoint retention, logs without repeated steps."""

import errno
import json
import os
import pathlib
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from atjax import config as config_lib
from atjax import testing
from atjax import train as train_cli
from atjax import train_step as step_lib
from atjax import trainer as trainer_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "train_worker.py"


def _env(devices: int, **extra) -> dict:
    # Every worker compiles the same few programs: they share JAX's persistent cache,
    # which tests/conftest.py names in the environment they inherit.
    env = dict(os.environ)
    assert "JAX_COMPILATION_CACHE_DIR" in env
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(workdir, steps, *args, devices=1, timeout=420, **env):
    cmd = [sys.executable, str(WORKER), str(workdir), str(steps), *map(str, args)]
    return subprocess.run(cmd, env=_env(devices, **env), capture_output=True, text=True,
                          timeout=timeout)


def _params(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_params_close(a: dict, b: dict, atol=2e-5):
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst < atol, worst


def _losses(workdir) -> list[float]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


def _logged_steps(workdir) -> list[int]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


def _tensorboard_steps(workdir, tag="loss") -> list[int]:
    """The steps of `tag`'s scalars as TensorBoard shows them. The event files are read in
    name order (their creation time), record by record (TFRecord: a uint64 length, a CRC,
    the Event, a CRC); a SessionLog START at step S, a SummaryWriter's `purge_step`,
    discards the events of steps >= S read before it, as TensorBoard's reader does."""
    from tensorboardX.proto import event_pb2

    steps = []
    for path in sorted((pathlib.Path(workdir) / "tensorboard").glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            if event.session_log.status == event_pb2.SessionLog.START:
                steps = [s for s in steps if s < event.step]
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def _checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                  if p.name.isdigit())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """3 uninterrupted steps on one device: the run every other variant must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    out = workdir / "params.npz"
    r = _run(workdir / "run", 3, "--save_params", out)
    assert r.returncode == 0, r.stderr[-3000:]
    # The heap is frozen while training (atjax.host_gc) and handed back afterwards; every
    # logged step says how often the collector still ran.
    frozen = int(r.stdout.split("gc_frozen_while_training=")[1].split()[0])
    assert frozen > 10_000, r.stdout[-500:]  # the libraries and the model, at least
    assert "gc_frozen=0" in r.stdout, r.stdout[-500:]
    logged = [json.loads(line)
              for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [rec for rec in logged if "loss" in rec]
    assert len(logged) == 3
    # Without a progress bar each logged step is a line of the log, with its rate.
    lines = re.findall(r"step (\d)/3: loss [\d.]+, [\d.]+ examples/s", r.stderr)
    assert lines == ["1", "2", "3"], r.stderr[-2000:]
    for rec in logged:
        assert {"gc_collections", "gc_full", "gc_ms"} <= rec.keys(), rec
        assert rec["gc_ms"] >= 0 and rec["gc_full"] <= rec["gc_collections"]
    return workdir / "run", _params(out)


@pytest.mark.slow
def test_eight_devices_match_one(reference_run, tmp_path):
    ref_dir, ref_params = reference_run
    out = tmp_path / "params.npz"
    r = _run(tmp_path / "run", 3, "--save_params", out, devices=8)
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(_losses(tmp_path / "run"), _losses(ref_dir), rtol=1e-4)
    _assert_params_close(_params(out), ref_params)


def _reserve_port() -> socket.socket:
    """A free port for the coordinator, bound until the run is over. With SO_REUSEPORT the
    coordinator's gRPC server, which sets it too, binds the port all the same, while a bind
    by any other program fails: the port cannot be taken between this choice and the
    coordinator's start, as it could be once a probe socket was closed."""
    try:
        s = socket.socket(socket.AF_INET6)  # the coordinator listens on [::]
        address = ("::", 0)
    except OSError:  # no IPv6: the coordinator listens on 0.0.0.0
        s = socket.socket(socket.AF_INET)
        address = ("0.0.0.0", 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(address)
    return s


def _two_processes(workdir, steps, *extra, tries=3) -> list[str]:
    # A coordinator that still cannot bind its port (another gRPC server of this user took
    # it with SO_REUSEPORT of its own) fails at once: process 1 is stopped and both start
    # again on a new port.
    for attempt in range(tries):
        with _reserve_port() as reserved:
            port = reserved.getsockname()[1]
            procs = []
            for pid in range(2):
                args = [sys.executable, str(WORKER), str(workdir), str(steps)]
                if pid == 0:
                    args += list(map(str, extra))
                procs.append(subprocess.Popen(
                    args, env=_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                   JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=pid),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            first = procs[0].communicate(timeout=420)
            if procs[0].returncode and "Failed to start RPC server" in first[1] \
                    and attempt + 1 < tries:
                procs[1].kill()
                procs[1].communicate()
                continue
            outputs = [first, procs[1].communicate(timeout=420)]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, err[-3000:]
        return [err for _, err in outputs]


@pytest.mark.slow
def test_two_processes_train_one_model_and_resume(reference_run, tmp_path):
    # Two steps, then a second start that resumes from the step-2 checkpoint: each process
    # gets its own input position back (ArrayInput's, like the pipeline's, belongs to one
    # process and refuses another's), and the run ends where one device's ends.
    ref_dir, ref_params = reference_run
    _two_processes(tmp_path / "run", 2)
    errs = _two_processes(tmp_path / "run", 3, "--save_params", tmp_path / "params.npz")
    assert all("resuming from step 2" in e for e in errs), errs[1][-2000:]
    np.testing.assert_allclose(_losses(tmp_path / "run"), _losses(ref_dir), rtol=1e-4)
    _assert_params_close(_params(tmp_path / "params.npz"), ref_params)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(reference_run, tmp_path):
    _, ref_params = reference_run
    workdir = tmp_path / "run"
    # Slow steps so the kill lands after the step-2 checkpoint and before the end.
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(workdir), "3", "--step_sleep", "4"],
        env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # While it trains, a second trainer of another model on its workdir is refused by the
    # workdir's lock, naming the first's PID, and changes nothing there.
    deadline = time.time() + 400
    while time.time() < deadline and not (workdir / "config.json").exists():
        time.sleep(0.2)
    config = (workdir / "config.json").read_text()
    second = _run(workdir, 3, "--override", "model.embed_dim=48")
    assert second.returncode != 0 and f"in use by another trainer (PID {proc.pid}" in \
        second.stderr, second.stderr[-2000:]
    assert (workdir / "config.json").read_text() == config
    while time.time() < deadline:
        done = [p for p in (workdir / "checkpoints").glob("2") if (p / "_CHECKPOINT_METADATA").exists()]
        if done or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    # The killed run's lock file stays, naming it; the kernel has dropped its lock.
    assert (workdir / trainer_lib.LOCK_NAME).read_text().split()[0] == str(proc.pid)
    out = tmp_path / "params.npz"
    r = _run(workdir, 3, "--save_params", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step 2" in r.stderr
    _assert_params_close(_params(out), ref_params, atol=1e-6)


@pytest.mark.slow
def test_sigterm_saves_and_resumes(reference_run, tmp_path):
    _, ref_params = reference_run
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(workdir), "3", "--step_sleep", "3",
         "--checkpoint_every", "100"],
        env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # metrics.jsonl is opened once train() has put its SIGTERM handler in: the signal then
    # lands seconds before the first step's end (each batch takes 3 s), where it is acted on.
    deadline = time.time() + 400
    metrics = workdir / "metrics.jsonl"
    while time.time() < deadline and not metrics.exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted=True" in out
    saved = _checkpoint_steps(workdir)
    assert len(saved) == 1 and saved[0] < 3, saved  # the SIGTERM's step, not the last
    stopped = saved[0]
    assert f"DONE step={stopped} " in out
    r = _run(workdir, 3, "--save_params", tmp_path / "params.npz", "--checkpoint_every", "100")
    assert r.returncode == 0, r.stderr[-3000:]
    # The second run resumed from that checkpoint and trained only the steps after it.
    assert f"resuming from step {stopped}" in r.stderr, r.stderr[-2000:]
    trained = [int(n) for n in re.findall(r"step (\d)/3: loss", r.stderr)]
    assert trained == list(range(stopped + 1, 4)), r.stderr[-2000:]
    # Each step is logged once, in metrics.jsonl and in TensorBoard's view of the events.
    assert _logged_steps(workdir) == [1, 2, 3]
    assert _tensorboard_steps(workdir) == [1, 2, 3]
    _assert_params_close(_params(tmp_path / "params.npz"), ref_params, atol=1e-6)


@pytest.mark.slow
def test_weight_copies_resume_to_the_run_without_them(tmp_path):
    # bfloat16 compute. A run that keeps bfloat16 weight copies, stopped after its step-2
    # checkpoint and resumed, must end exactly where a run without copies ends: the copies
    # change no number, and the resumed run derives them again from the checkpoint's
    # float32 masters (checkpoints do not hold them).
    bf16 = ["--override", "model.compute_dtype=bfloat16"]
    copies = [*bf16, "--override", "model.kernel_overrides.weight_copies=True"]
    r = _run(tmp_path / "plain", 3, "--save_params", tmp_path / "plain.npz", *bf16)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(tmp_path / "copies", 2, *copies)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(tmp_path / "copies", 3, "--save_params", tmp_path / "copies.npz", *copies)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step 2" in r.stderr
    copies_kept = int(r.stdout.split("copies=")[1].split()[0])
    assert copies_kept > 10, r.stdout  # the resumed run still reads copies
    np.testing.assert_array_equal(_losses(tmp_path / "copies")[-1], _losses(tmp_path / "plain")[-1])
    _assert_params_close(_params(tmp_path / "copies.npz"), _params(tmp_path / "plain.npz"),
                         atol=1e-12)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    r = _run(workdir, 6, "--nan_at", 4)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "at step 4" in r.stdout
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2], steps  # step 4's (NaN) state was never saved


def _in_process(workdir, steps, *overrides, input_class=testing.ArrayInput):
    """A Trainer in this process, on the tiny synthetic config (test_trainer_resume's)."""
    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny,head=mlp", [
        f"total_steps={steps}", "log_every_steps=1", *overrides])
    return trainer_lib.Trainer(config, workdir, progress=False,
                               input_factory=lambda config, **kw: input_class(**kw))


def _fail_input_write_of(step: int):
    """orbax's background write of the input position of `step`'s checkpoint, failing as
    on a full disk."""
    original = ocp.JsonCheckpointHandler._save_fn

    async def save_fn(self, item, directory):
        if f"/{step}.orbax-checkpoint-tmp" in str(directory):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "input"))
        return await original(self, item, directory)

    return save_fn


@pytest.fixture(scope="module")
def failed_save_then_restart(tmp_path_factory):
    """A run of 10 steps whose step-4 checkpoint fails in orbax's background write (no
    checkpoint before it), then a restart of the workdir, from scratch, for 4 steps with a
    checkpoint at each and keep_checkpoints=2."""
    workdir = tmp_path_factory.mktemp("failed_save") / "run"
    drawn = []

    class Input(testing.ArrayInput):
        def __next__(self):
            drawn.append(self.position + 1)  # the step this batch is for
            if self.position >= 4:  # slow steps after the save: it fails within the first
                time.sleep(3)
            return super().__next__()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ocp.JsonCheckpointHandler, "_save_fn", _fail_input_write_of(4))
        first = _in_process(workdir, 10, "checkpoint_every_steps=4", input_class=Input)
        try:
            first.train()
            error = None
        except Exception as e:  # noqa: BLE001 - the tests say which it must be
            error = e
    run = dict(workdir=workdir, error=error, drawn=list(drawn),
               first_checkpoints=_checkpoint_steps(workdir), first_logged=_logged_steps(workdir))
    run["restarted"] = _in_process(workdir, 4, "checkpoint_every_steps=1", "keep_checkpoints=2")
    run["result"] = run["restarted"].train()
    return run


def test_a_failed_save_stops_the_run_naming_the_step_and_the_error(failed_save_then_restart):
    run = failed_save_then_restart
    error = run["error"]
    assert isinstance(error, trainer_lib.CheckpointSaveError), repr(error)
    assert "step 4" in str(error) and "No space left on device" in str(error), str(error)
    assert "No checkpoint is kept" in str(error)
    # Stopped once the save's failure was known, long before the next save (step 8) that
    # orbax would have reported it at; steps 5-7 take 3 s each.
    assert 4 <= max(run["drawn"]) < 8, run["drawn"]
    assert run["first_checkpoints"] == []


def test_a_restart_without_a_checkpoint_logs_each_step_once(failed_save_then_restart):
    run = failed_save_then_restart
    assert run["first_logged"][:4] == [1, 2, 3, 4]  # logged by the failed run too
    assert run["result"].step == 4
    assert _logged_steps(run["workdir"]) == [1, 2, 3, 4]
    assert _tensorboard_steps(run["workdir"]) == [1, 2, 3, 4]


def test_keep_checkpoints_keeps_the_newest(failed_save_then_restart):
    # Saved at steps 1, 2, 3 and 4 with keep_checkpoints=2.
    assert _checkpoint_steps(failed_save_then_restart["workdir"]) == [3, 4]


def test_keep_checkpoints_below_one_is_refused(tmp_path, capsys):
    for keep in (0, -1, None):
        config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny", [])
        config.unlock()
        config.keep_checkpoints = keep
        with pytest.raises(config_lib.ConfigError, match=r"keep_checkpoints must be an integer "
                                                         r">= 1, got " + re.escape(repr(keep))):
            config_lib.check_train_config(config)
    config.keep_checkpoints = 1
    config_lib.check_train_config(config)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--config", f"{ROOT}/configs/synthetic.py:size=tiny", "--workdir",
                        str(tmp_path / "run"), "--config.keep_checkpoints=0"])
    assert exit_info.value.code == 2
    assert "keep_checkpoints must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_second_trainer_is_refused_while_the_first_lives(tmp_path, capsys):
    from atjax import folder_lock

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"the first": "run"}')
    # The first trainer, as far as the workdir can tell: a process that holds its lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
         "from atjax import folder_lock; folder_lock.lock(sys.argv[2]); print('locked', "
         "flush=True); time.sleep(600)", str(ROOT), str(workdir / trainer_lib.LOCK_NAME)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["--config", f"{ROOT}/configs/synthetic.py:size=tiny", "--workdir",
                str(workdir), "--no_progress", "--config.model.embed_dim=48"]
        with pytest.raises(SystemExit) as exit_info:
            train_cli.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        assert f"is in use by another trainer (PID {holder.pid} on host " in err, err
        assert "Traceback" not in err
        config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny", [])
        with pytest.raises(trainer_lib.WorkdirBusyError, match=f"PID {holder.pid}"):
            trainer_lib.Trainer(config, workdir, progress=False)
        # Nothing in the workdir changed.
        assert sorted(p.name for p in workdir.iterdir()) == ["config.json",
                                                              trainer_lib.LOCK_NAME]
        assert (workdir / "config.json").read_text() == '{"the first": "run"}'
    finally:
        holder.kill()
        holder.wait()
    # Killed, the holder leaves its PID in the file but no lock: the next one takes it.
    assert (workdir / trainer_lib.LOCK_NAME).read_text().split()[0] == str(holder.pid)
    os.close(folder_lock.lock(workdir / trainer_lib.LOCK_NAME))


def test_the_cli_reports_a_failed_save_without_a_traceback(tmp_path, capsys, monkeypatch):
    class Trainer:
        def __init__(self, *args, **kwargs):
            pass

        def train(self):
            raise trainer_lib.CheckpointSaveError("saving the checkpoint of step 4 failed")

    monkeypatch.setattr(trainer_lib, "Trainer", Trainer)
    code = train_cli.main(["--config", f"{ROOT}/configs/synthetic.py:size=tiny", "--workdir",
                           str(tmp_path / "run"), "--no_progress"])
    assert code == 1
    assert "error: saving the checkpoint of step 4 failed" in capsys.readouterr().err


def test_a_run_shorter_than_log_every_steps_logs_its_last_step(tmp_path):
    workdir = tmp_path / "run"
    _in_process(workdir, 1, "log_every_steps=10").train()
    assert _logged_steps(workdir) == [1]
    assert _tensorboard_steps(workdir) == [1]


def test_a_refused_fresh_run_leaves_no_config_or_checkpoint_folders(tmp_path):
    """A text folder that does not fit the config (the tiny encoder's overrides against
    MiniLM's config.json) refuses the run before anything of it is written."""
    from atjax import config as config_lib

    workdir = tmp_path / "run"
    workdir.mkdir()
    with pytest.raises(config_lib.ConfigError, match="does not match .*config.json"):
        _in_process(workdir, 1, "model.text.pretrained=True")
    assert sorted(p.name for p in workdir.iterdir()) in ([], [trainer_lib.LOCK_NAME])
