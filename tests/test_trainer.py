"""The trainer end to end on CPU: sharding, multi-process, resume, NaN, preemption, export."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

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
    return [json.loads(l)["loss"] for l in lines if "loss" in json.loads(l)]


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
    logged = [json.loads(l) for l in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
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


def _two_processes(workdir, steps, *extra) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        args = [sys.executable, str(WORKER), str(workdir), str(steps)]
        if pid == 0:
            args += list(map(str, extra))
        procs.append(subprocess.Popen(
            args, env=_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=2,
                           JAX_PROCESS_ID=pid),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=420) for p in procs]
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
    deadline = time.time() + 400
    while time.time() < deadline:
        done = [p for p in (workdir / "checkpoints").glob("2") if (p / "_CHECKPOINT_METADATA").exists()]
        if done or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
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
    deadline = time.time() + 400
    metrics = workdir / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted=True" in out
    saved = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved, "no checkpoint written on SIGTERM"
    r = _run(workdir, 3, "--save_params", tmp_path / "params.npz", "--checkpoint_every", "100")
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_params_close(_params(tmp_path / "params.npz"), ref_params, atol=1e-6)


@pytest.mark.slow
def test_weight_copies_resume_to_the_run_without_them(tmp_path):
    # bfloat16 compute. A run that keeps bfloat16 weight copies, stopped after its step-2
    # checkpoint and resumed, must end exactly where a run without copies ends: the copies
    # change no number, and the resumed run derives them again from the checkpoint's
    # float32 masters (checkpoints do not hold them).
    bf16 = ["--override", "model.compute_dtype=bfloat16"]
    copies = [*bf16, "--override", "compute_weight_copies=True"]
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
