"""The GPU benchmarks, run on CPU at a tiny size: `atjax.bench train_step` reports
consistent figures, and `atjax.bench profile` attributes device time to the model's parts
and to op categories that a hand-made program is known to contain."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atjax import config as config_lib
from atjax import train_step as step_lib
from atjax.bench import profile as profile_lib
from atjax.bench import train_step as bench

TINY = "configs/synthetic.py:size=tiny"


def test_train_step_bench_reports_consistent_figures(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert bench.main(["--config", TINY, "--config.rng_impl=rbg", "--heads", "mlp",
                       "--dtypes", "float32", "--batch_size", "8", "--warmup", "1",
                       "--steps", "2", "--repeats", "2", "--sync_steps", "2",
                       "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text().splitlines()[-1]) == line
    assert "error" not in line, line
    assert line["rng_impl"] == "rbg" and line["overrides"] == ["rng_impl=rbg"]
    assert line["head"] == "mlp" and line["dtype"] == "float32" and line["batch_size"] == 8
    assert 0 < line["step_ms_min"] <= line["step_ms"]
    assert line["clips_per_s"] == pytest.approx(8e3 / line["step_ms"], rel=2e-3)
    assert 0 < line["dispatch_ms"] and line["step_ms_sync"] > 0
    counted = line["tflop_per_step"] * 1e12
    assert line["achieved_tflops"] == pytest.approx(
        counted / (line["step_ms"] / 1e3) / 1e12, abs=0.06)
    assert np.isfinite(line["loss"]) and line["loss"] > 0


def test_train_step_bench_reports_a_failing_setting(capsys):
    assert bench.main(["--config", TINY, "--heads", "mlp", "--dtypes", "float16",
                       "--batch_size", "8"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["dtype"] == "float16" and "error" in line


def test_rng_impl_is_checked_and_keys_the_step():
    config = config_lib.load(TINY, ["rng_impl=rbg"])
    assert jax.random.key_impl(step_lib.base_key(config)) == jax.random.key_impl(
        jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match="rng_impl must be one of"):
        step_lib.base_key(config_lib.load(TINY, ["rng_impl=philox"]))


def test_scope_of_reads_the_model_scopes():
    assert profile_lib.scope_of(
        "jit(train_step)/transpose(jvp(audio_encoder))/stage2/conv_general_dilated"
    ) == ("audio_encoder/stage2", "backward")
    assert profile_lib.scope_of(
        "jit(train_step)/jvp(text_encoder)/layers/dot_general") == ("text_encoder/layers",
                                                                   "forward")
    assert profile_lib.scope_of("jit(train_step)/optimizer/mul") == ("optimizer", "forward")
    assert profile_lib.scope_of("jit(train_step)/jvp(loss)/exp") == ("loss", "forward")
    assert profile_lib.scope_of("jit(train_step)/add") == ("other", "forward")


def test_categories_of_a_known_program():
    def f(key, image, kernel, matrix):
        conv = jax.lax.conv_general_dilated(image, kernel, (1, 1), "SAME")
        keep = jax.random.bernoulli(key, 0.9, conv.shape)
        spectrum = jnp.abs(jnp.fft.rfft(matrix, axis=-1))
        return jnp.where(keep, conv, 0).mean(axis=(2, 3)), (matrix @ matrix.T).sum(), spectrum

    args = (jax.random.key(0), jnp.ones((2, 3, 16, 16)), jnp.ones((4, 3, 3, 3)),
            jnp.ones((32, 32)))
    hlo = profile_lib.parse_hlo(jax.jit(f).lower(*args).compile().as_text())
    found = {profile_lib.category(hlo, inst) for inst in hlo.instructions.values()}
    assert {"convolution", "matmul", "fft", "rng", "reduction"} <= found


def test_profile_attributes_the_step(tmp_path, capsys):
    out = tmp_path / "profile"
    assert profile_lib.main(["--config", TINY, "--head", "transformer", "--dtype", "float32",
                             "--batch_size", "8", "--warmup", "1", "--steps", "2",
                             "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.splitlines()[0])
    assert summary == json.loads((out / "profile.json").read_text())
    assert (summary["head"], summary["dtype"], summary["batch_size"]) == ("transformer",
                                                                          "float32", 8)
    assert "by part" in printed and (out / "trace.xplane.pb").stat().st_size > 0
    assert (out / "step.hlo.txt.gz").stat().st_size > 0
    scopes = summary["by_scope"]
    for part in ("audio_encoder/conv_block1", "audio_encoder/stage1", "audio_encoder/frontend",
                 "text_encoder/layers", "audio_head", "text_head", "optimizer"):
        assert part in scopes, (part, sorted(scopes))
    assert scopes["audio_encoder/conv_block1"]["backward"] > 0
    assert scopes["optimizer"]["backward"] == 0  # the update is not differentiated
    busy, op_ms = summary["device_busy_ms"], summary["device_op_ms"]
    assert busy > 0
    # Op times add up by category and by part. Busy time is the union of the thunks'
    # intervals: on a CPU it counts control-flow thunks (whose bodies are timed as ops)
    # and thunks on several threads once, so it need not equal the op time.
    assert sum(summary["by_category"].values()) == pytest.approx(op_ms, rel=1e-3, abs=5e-3)
    assert sum(sum(v.values()) for v in scopes.values()) == pytest.approx(op_ms, rel=1e-3,
                                                                          abs=5e-3)
    assert op_ms > 0 and busy <= summary["device_span_ms"] + 1e-3
    assert {"convolution", "rng", "fft"} <= set(summary["by_category"])
    top = summary["top_ops"]
    assert top == sorted(top, key=lambda r: -r["ms_per_step"])


def test_gpu_session_script_runs_end_to_end(tmp_path):
    # The prepared device-session script, on CPU at a tiny size: a profiled setting, a
    # failing one that must not stop the rest, one with config overrides, one with its own
    # XLA flags, and the first again. The others are compiled in parallel first and then
    # timed loading their compiled steps from the persistent cache.
    import os
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "BUDGET_S": "240", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
           "BENCH_ARGS": "--batch_size 8 --steps 2 --repeats 1 --sync_steps 1 --warmup 1"}
    result = subprocess.run(
        ["bash", "launch/gpu_bench.sh", str(out), TINY, "mlp:float32",
         "transformer:float16", "mlp:float32:rng_impl=rbg,model.audio.batchnorm_one_pass=True",
         "mlp:float32@--xla_cpu_enable_fast_math=false", "mlp:float32"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "bench.jsonl").read_text().splitlines()]
    assert [r["dtype"] for r in lines] == ["float32", "float16", "float32", "float32", "float32"]
    assert ["error" in r for r in lines] == [False, True, False, False, False]
    profiled = json.loads((out / "profile.json").read_text())
    assert (profiled["head"], profiled["dtype"], profiled["batch_size"]) == ("mlp", "float32", 8)
    assert lines[0]["profile"] and "profile" not in lines[4]
    assert lines[2]["overrides"] == ["rng_impl=rbg", "model.audio.batchnorm_one_pass=True"]
    assert lines[3]["xla_flags"] == "--xla_cpu_enable_fast_math=false"
    assert lines[0]["xla_flags"] == lines[2]["xla_flags"] == ""
    # The repeat of the first setting loads the step the first run compiled.
    assert lines[4]["compile_s"] < 0.7 * lines[0]["compile_s"], (lines[0], lines[4])
    log = (out / "log.txt").read_text()
    assert log.count("(compile only)") == 2 and "compiling 3 settings in parallel" in log
    assert sorted(p.name for p in out.iterdir()) == [
        "bench.jsonl", "log.txt", "profile.json", "profile.txt", "step.hlo.txt.gz",
        "trace.xplane.pb.gz"]
    table = result.stdout.splitlines()
    assert table[-6].startswith("setting") and "error" in table[-4]
    assert table[-2].endswith(f"{lines[3]['compile_s']:6.1f}") and "@--xla_cpu" in table[-2]


def test_summary_of_unannotated_kernels():
    # A GPU trace whose kernels carry no op annotation: fusion kernels map back to their
    # HLO ops by name, library kernels are classed by name, and idle is wall minus busy.
    hlo = profile_lib.Hlo({"loop_add_fusion.3": profile_lib.Instruction(
        "loop_add_fusion.3", "add", "jit(train_step)/optimizer/add")}, {})
    times = {name: profile_lib.OpTime(name, ns, calls) for name, ns, calls in (
        ("kernel:loop_add_fusion_3", 4e6, 2), ("kernel:sm90_xmma_gemm_bf16bf16", 2e6, 2),
        ("kernel:cudnn_conv_fprop", 1e6, 2))}
    summary = profile_lib.summarize(times, hlo, steps=2, wall_s=0.008)
    assert summary["by_scope"]["optimizer"] == {"forward": 2.0, "backward": 0.0}
    assert summary["by_scope"]["unattributed"]["forward"] == 1.5
    assert summary["by_category"] == {"elementwise": 2.0, "matmul": 1.0, "convolution": 0.5}
    assert summary["step_ms"] == 4.0 and summary["device_idle_ms"] == 0.5
    assert [r["op"] for r in summary["top_ops"]][0] == "kernel:loop_add_fusion_3"


def test_busy_time_counts_concurrent_kernels_once():
    # Kernels of one CUDA graph can overlap: busy time is the union of their intervals,
    # while the op times still add up by category.
    assert profile_lib._union_ns([(0, 4), (2, 6), (10, 11), (3, 5)]) == 7
    assert profile_lib._union_ns([]) == 0
    times = {"kernel:loop_add_fusion_1": profile_lib.OpTime("kernel:loop_add_fusion_1", 6e6, 2),
             "kernel:nvjet_sm90_tst_128x128": profile_lib.OpTime("kernel:nvjet_sm90_tst_128x128",
                                                                 4e6, 2)}
    summary = profile_lib.summarize(times, profile_lib.Hlo({}, {}), steps=2, wall_s=0.010,
                                    busy_ns=8e6, span_ns=9e6)
    assert summary["device_op_ms"] == 5.0 and summary["device_busy_ms"] == 4.0
    assert summary["device_idle_ms"] == 1.0 and summary["device_span_ms"] == 4.5
    assert summary["by_category"] == {"elementwise": 3.0, "matmul": 2.0}
    text = profile_lib.format_tables(summary)
    assert "device busy 4.00 ms, idle 1.00 ms; op time 5.00 ms" in text


def test_a_failing_profile_keeps_the_timings(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no device plane")

    monkeypatch.setattr(profile_lib, "capture", broken)
    assert bench.main(["--config", TINY, "--heads", "mlp", "--dtypes", "float32",
                       "--batch_size", "8", "--warmup", "1", "--steps", "2", "--repeats", "1",
                       "--sync_steps", "0", "--profile", "unused"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["step_ms"] > 0 and "error" not in line
    assert line["profile_error"] == "RuntimeError: no device plane"
