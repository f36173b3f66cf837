"""Multi-host set-up: SLURM's device assignment and the TPU pod launcher's command line."""

import os
import pathlib
import stat
import subprocess

import jax
import pytest

from atjax import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]
_CLEAN = ("ATJAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
          "SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE")


@pytest.mark.parametrize("per_node,gpus,expected", [
    ("1", "8", {"local_device_ids": list(range(8))}),  # launch/slurm.sbatch: one task a node
    ("1(x4)", "4", {"local_device_ids": [0, 1, 2, 3]}),
    ("8", "8", {}),  # one task per GPU: JAX's own assignment (SLURM_LOCALID) is right
    ("1", "", {}),   # no GPUs named: leave it to JAX
])
def test_slurm_tasks_get_their_nodes_gpus(monkeypatch, per_node, gpus, expected):
    for name in _CLEAN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", per_node)
    if gpus:
        monkeypatch.setenv("SLURM_GPUS_ON_NODE", gpus)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    sharding.initialize_distributed()
    assert calls == [expected]


def _tpu_pod_command(tmp_path, *args) -> str:
    """The command launch/tpu_pod.sh hands to gcloud, through a stand-in gcloud."""
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nwhile [ "$1" != "--command" ]; do shift; done\n'
                    'printf "%s" "$2" > "$GCLOUD_COMMAND"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}",
               GCLOUD_COMMAND=str(tmp_path / "command"))
    subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"), "my-tpu", "zone-a",
                    "configs/paper.py:table5-mlp-original", "/mnt/runs/t5", *args],
                   env=env, check=True)
    return (tmp_path / "command").read_text()


def test_tpu_pod_command_without_and_with_overrides(tmp_path):
    plain = _tpu_pod_command(tmp_path)
    assert plain.endswith("--workdir /mnt/runs/t5 --no_progress"), plain
    assert plain.startswith("cd ~/atjax && ATJAX_DISTRIBUTED=1 python -m atjax.train")
    (tmp_path / "bin" / "gcloud").unlink()
    (tmp_path / "bin").rmdir()
    extra = _tpu_pod_command(tmp_path, "--config.model.text.path=/data/hf/a b")
    assert extra.endswith("--no_progress --config.model.text.path=/data/hf/a\\ b"), extra
