"""The GPU benchmarks, run on CPU at a tiny size: `atjax.bench train_step` reports
consistent figures, and `atjax.bench profile` attributes device time to the model's parts
and to op categories that a hand-made program is known to contain."""

import ast
import json
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atjax import config as config_lib
from atjax import train_step as step_lib
from atjax.bench import attribution
from atjax.bench import capture as capture_lib
from atjax.bench import hlo as hlo_lib
from atjax.bench import profile as profile_lib
from atjax.bench import trace as trace_lib
from atjax.bench import train_step as bench

TINY = f"{pathlib.Path(__file__).resolve().parents[1]}/configs/synthetic.py:size=tiny"


@pytest.mark.slow
def test_train_step_bench_reports_consistent_figures(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert bench.main(["--config", TINY, "--config.model.kernel_overrides.rng_impl=rbg", "--heads", "mlp",
                       "--dtypes", "float32", "--batch_size", "8", "--warmup", "1",
                       "--steps", "2", "--repeats", "2", "--sync_steps", "2",
                       "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text().splitlines()[-1]) == line
    assert "error" not in line, line
    assert line["rng_impl"] == "rbg" and line["overrides"] == ["model.kernel_overrides.rng_impl=rbg"]
    assert line["head"] == "mlp" and line["dtype"] == "float32" and line["batch_size"] == 8
    assert 0 < line["step_ms_min"] <= line["step_ms"] <= line["step_ms_max"]
    assert line["step_ms_window"] > 0
    assert line["clips_per_s"] == pytest.approx(8e3 / line["step_ms"], rel=2e-3)
    assert 0 < line["dispatch_ms"] and line["step_ms_sync"] > 0
    counted = line["tflop_per_step"] * 1e12
    assert line["achieved_tflops"] == pytest.approx(
        counted / (line["step_ms"] / 1e3) / 1e12, abs=0.06)
    assert np.isfinite(line["loss"]) and line["loss"] > 0


class _Clock:
    """A fake `time.perf_counter` that moves only when told: the simulated host's and
    device's times below are then exact, whatever else the machine is doing."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class _QueuedResult:
    """A result that a simulated device finishes at `done` (clock seconds)."""

    def __init__(self, clock, done):
        self.clock = clock
        self.done = done

    def block_until_ready(self):
        self.clock.now = max(self.clock.now, self.done)  # the host waits for the device
        return self


def _simulated_setup(clock, host_s, device_s):
    """A bench Setup whose step takes `host_s` on the host to dispatch and `device_s` on a
    device that runs steps in order, one at a time, as a GPU stream does."""
    device_free = [0.0]

    def step_fn(state, batch, rest, key):
        clock.now += host_s  # the host's work before the step's first kernel is queued
        start = max(clock.now, device_free[0])
        device_free[0] = start + device_s
        return state, {"loss": _QueuedResult(clock, device_free[0])}

    return bench.Setup(config=None, step_fn=step_fn, compiled=None, state=(),
                       batches=[None, None], rest=None, key=None, num_samples=0,
                       compile_s=0.0)


def test_emit_appends_json_lines_into_a_new_folder(tmp_path, capsys):
    # A result that took minutes to compile must not be lost to an --out folder that does
    # not exist yet: it is made, and lines are appended.
    from atjax.bench import emit

    out = tmp_path / "new" / "deeper" / "r.jsonl"
    emit({"a": 1}, str(out))
    emit({"b": [2]}, str(out))
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"a": 1}, {"b": [2]}]
    assert capsys.readouterr().out.splitlines() == ['{"a": 1}', '{"b": [2]}']


@pytest.mark.parametrize("host_s,device_s", [(0.030, 0.050), (0.050, 0.020)])
def test_steady_state_timing_cancels_the_window_start(host_s, device_s, monkeypatch):
    # A window started on an idle device pays once for the host's latency before the first
    # kernel (device-bound) or for the last step's device time (host-bound). The steady
    # state must be what a long run sees: the slower side's time per step. The bench reads
    # the fake clock, so the figures are exact.
    clock = _Clock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock))
    steps = 3
    setup = _simulated_setup(clock, host_s, device_s)
    steady, cold, dispatches = bench.time_windows(setup, steps, repeats=2)
    assert len(steady) == len(cold) == 2 and len(dispatches) == 2 * 3 * steps
    assert dispatches == pytest.approx([host_s] * len(dispatches), abs=1e-9)
    for s in steady:
        assert s == pytest.approx(max(host_s, device_s), abs=1e-9)
    once = host_s if host_s < device_s else device_s  # what the window pays once
    for c in cold:
        assert c == pytest.approx(max(host_s, device_s) + once / steps, abs=1e-9)
    with pytest.raises(ValueError, match=">= 1"):
        bench.time_windows(setup, 0, 1)


def test_train_step_bench_reports_a_failing_setting(capsys):
    assert bench.main(["--config", TINY, "--heads", "mlp", "--dtypes", "float16",
                       "--batch_size", "8"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["dtype"] == "float16" and "error" in line


def test_rng_impl_is_checked_and_keys_the_step():
    config = config_lib.load(TINY, ["model.kernel_overrides.rng_impl=rbg"])
    assert jax.random.key_impl(step_lib.base_key(config)) == jax.random.key_impl(
        jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match="rng_impl must be one of"):
        step_lib.base_key(config_lib.load(TINY, ["model.kernel_overrides.rng_impl=philox"]))


def test_the_bench_modules_import_one_another_without_a_loop():
    # Function-level imports count too: a loop of lazy imports is a loop all the same.
    folder = pathlib.Path(bench.__file__).parent
    imports = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "atjax.bench":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "atjax.bench."):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[2] for a in node.names
                          if a.name.startswith("atjax.bench.")}
        imports[path.stem] = found - {path.stem}
    assert "capture" in imports["train_step"] and "train_step" in imports["profile"]

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, (*seen, m)))
                   for m in imports.get(start, ()))

    assert [m for m in imports if reaches(m, m)] == []


def test_scope_of_reads_the_model_scopes():
    assert hlo_lib.scope_of(
        "jit(train_step)/transpose(jvp(audio_encoder))/stage2/conv_general_dilated"
    ) == ("audio_encoder/stage2", "backward")
    assert hlo_lib.scope_of(
        "jit(train_step)/jvp(text_encoder)/layers/dot_general") == ("text_encoder/layers",
                                                                   "forward")
    assert hlo_lib.scope_of("jit(train_step)/optimizer/mul") == ("optimizer", "forward")
    assert hlo_lib.scope_of("jit(train_step)/jvp(loss)/exp") == ("loss", "forward")
    assert hlo_lib.scope_of("jit(train_step)/add") == ("other", "forward")


def test_categories_of_a_known_program():
    def f(key, image, kernel, matrix):
        conv = jax.lax.conv_general_dilated(image, kernel, (1, 1), "SAME")
        keep = jax.random.bernoulli(key, 0.9, conv.shape)
        spectrum = jnp.abs(jnp.fft.rfft(matrix, axis=-1))
        return jnp.where(keep, conv, 0).mean(axis=(2, 3)), (matrix @ matrix.T).sum(), spectrum

    args = (jax.random.key(0), jnp.ones((2, 3, 16, 16)), jnp.ones((4, 3, 3, 3)),
            jnp.ones((32, 32)))
    hlo = hlo_lib.parse_hlo(jax.jit(f).lower(*args).compile().as_text())
    found = {hlo_lib.category(hlo, inst) for inst in hlo.instructions.values()}
    assert {"convolution", "matmul", "fft", "rng", "reduction"} <= found


THREEFRY_HLO = """HloModule m

%fused_rounds (p0: u32[64,8], p1: u32[64,8]) -> u32[64,8] {
  %p0 = u32[64,8]{1,0} parameter(0)
  %p1 = u32[64,8]{1,0} parameter(1)
  %add.1 = u32[64,8]{1,0} add(%p0, %p1), metadata={op_name="jit(f)/jvp(audio_encoder)/stage1/add"}
  %c13 = u32[] constant(13)
  %b13 = u32[64,8]{1,0} broadcast(%c13), dimensions={}
  %shl = u32[64,8]{1,0} shift-left(%p1, %b13)
  %c19 = u32[] constant(19)
  %b19 = u32[64,8]{1,0} broadcast(%c19), dimensions={}
  %shr = u32[64,8]{1,0} shift-right-logical(%p1, %b19)
  %or.1 = u32[64,8]{1,0} or(%shl, %shr)
  ROOT %xor.1 = u32[64,8]{1,0} xor(%or.1, %add.1), metadata={op_name="jit(f)/jvp(audio_encoder)/stage1/xor"}
}

%fused_flip (p0: s32[64,8], p1: s32[64,8]) -> s32[64,8] {
  %p0 = s32[64,8]{1,0} parameter(0)
  %p1 = s32[64,8]{1,0} parameter(1)
  %c1 = s32[] constant(1)
  %b1 = s32[64,8]{1,0} broadcast(%c1), dimensions={}
  %shl = s32[64,8]{1,0} shift-left(%p0, %b1)
  %shr = s32[64,8]{1,0} shift-right-logical(%p1, %b1)
  ROOT %xor.2 = s32[64,8]{1,0} xor(%shl, %shr)
}

ENTRY %main (a: u32[64,8], b: u32[64,8], c: s32[64,8]) -> u32[64,8] {
  %a = u32[64,8]{1,0} parameter(0)
  %b = u32[64,8]{1,0} parameter(1)
  %c = s32[64,8]{1,0} parameter(2)
  %loop_xor_fusion = u32[64,8]{1,0} fusion(%a, %b), kind=kLoop, calls=%fused_rounds, metadata={op_name="jit(f)/jvp(audio_encoder)/stage1/xor"}
  %loop_xor_fusion.1 = s32[64,8]{1,0} fusion(%c, %c), kind=kLoop, calls=%fused_flip
  ROOT %xor.3 = u32[64,8]{1,0} xor(%a, %b), metadata={op_name="jit(f)/stage1/xor"}
}
"""


def test_threefry_rounds_count_as_rng_under_their_callers_name():
    # As XLA:GPU fuses dropout's threefry rounds: named after the calling scope.
    hlo = hlo_lib.parse_hlo(THREEFRY_HLO)
    inst = hlo.instructions
    assert hlo_lib.category(hlo, inst["loop_xor_fusion"]) == "rng"
    assert hlo_lib.scope_of(hlo_lib.op_name_of(hlo, inst["loop_xor_fusion"])) == (
        "audio_encoder/stage1", "forward")
    # Signed bit tricks and a lone xor are not a PRNG.
    assert hlo_lib.category(hlo, inst["loop_xor_fusion.1"]) == "elementwise"
    assert hlo_lib.category(hlo, inst["xor.3"]) == "elementwise"


@pytest.mark.slow
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
    # Every thunk is an HLO op: each has its shape, its bytes and their rate.
    assert all(r["shape"] and r["gb_per_s"] is not None for r in top), top
    assert any(r["bytes_per_call"] > 0 and r["gb_per_s"] > 0 for r in top)
    assert "GB/s" in printed

    # Read again from the saved files, the trace and HLO packed as a GPU session returns
    # them: the same attribution, the setting kept, more ops listed on request.
    import gzip
    import shutil

    for name in ("trace.xplane.pb",):
        with open(out / name, "rb") as src, gzip.open(out / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (out / name).unlink()
    assert profile_lib.main(["--reread", str(out), "--top", "40"]) == 0
    again = json.loads((out / "profile.json").read_text())
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == again
    for key in ("head", "dtype", "batch_size", "overrides", "compile_s", "steps", "step_ms",
                "device_busy_ms", "device_op_ms", "by_category", "by_scope"):
        assert again[key] == summary[key], key
    assert again["top_ops"][:len(top)] == top and len(again["top_ops"]) > len(top)
    assert "rates by part" in (out / "profile.txt").read_text()

    # With --out, the re-read folder stays as it was (a kept trace in benchmarks/traces/)
    # and the new profile goes to --out, made if missing.
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    elsewhere = out.parent / "reread" / "deeper"
    assert profile_lib.main(["--reread", str(out), "--top", "60", "--out", str(elsewhere)]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept
    moved = json.loads((elsewhere / "profile.json").read_text())
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == moved
    assert moved["top_ops"][:len(again["top_ops"])] == again["top_ops"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["profile.json", "profile.txt"]


@pytest.mark.slow
def test_gpu_session_script_runs_end_to_end(tmp_path):
    # The prepared device-session script, on CPU at a tiny size: a profiled setting, a second
    # (the baseline) profiled too with its summary kept, a failing one that must not stop
    # the rest, one with its own XLA flags, and the first again. The others are compiled in
    # parallel first and then timed loading their compiled steps from the persistent cache.
    import os
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    # The budget only has to let every setting start: under load, a 2-core machine spent
    # 240 s before the second of five (2026-11-27).
    env = {**os.environ, "BUDGET_S": "1500", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
           "BENCH_ARGS": "--batch_size 8 --steps 2 --repeats 1 --sync_steps 1 --warmup 1",
           "ATTENTION_ARGS": "--interpret --batch_size 2 --heads 2 --calls 1 --repeats 1"}
    result = subprocess.run(
        ["bash", "launch/gpu_bench.sh", str(out), TINY, "mlp:float32",
         "mlp:float32:model.kernel_overrides.rng_impl=rbg,model.kernel_overrides.attention=auto", "transformer:float16",
         "mlp:float32@--xla_cpu_enable_fast_math=false", "mlp:float32"],
        cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "bench.jsonl").read_text().splitlines()]
    assert [r["dtype"] for r in lines] == ["float32", "float32", "float16", "float32", "float32"]
    assert ["error" in r for r in lines] == [False, False, True, False, False]
    profiled = json.loads((out / "profile.json").read_text())
    assert (profiled["head"], profiled["dtype"], profiled["batch_size"]) == ("mlp", "float32", 8)
    second = json.loads((out / "profile_b.json").read_text())
    assert second["overrides"] == ["model.kernel_overrides.rng_impl=rbg", "model.kernel_overrides.attention=auto"]
    assert (out / "profile_b.txt").read_text().startswith("step ")
    assert lines[0]["profile"] and lines[1]["profile"] and "profile" not in lines[4]
    assert lines[1]["overrides"] == ["model.kernel_overrides.rng_impl=rbg", "model.kernel_overrides.attention=auto"]
    assert lines[3]["xla_flags"] == "--xla_cpu_enable_fast_math=false"
    assert lines[0]["xla_flags"] == lines[1]["xla_flags"] == ""
    # The repeat of the first setting loads the step the first run compiled.
    assert lines[4]["compile_s"] < 0.7 * lines[0]["compile_s"], (lines[0], lines[4])
    log = (out / "log.txt").read_text()
    # Phase 0: the attention kernel's check, in Pallas's interpreter here.
    checked = json.loads(next(x for x in log.splitlines() if x.startswith('{"bench": "attention"')))
    assert checked["match"] and checked["interpret"] and "== attention kernel" in log
    assert log.count("(compile only)") == 2 and "compiling 3 settings in parallel" in log
    assert sorted(p.name for p in out.iterdir()) == [
        "bench.jsonl", "log.txt", "profile.json", "profile.txt", "profile_b.json",
        "profile_b.txt", "step.hlo.txt.gz", "trace.xplane.pb.gz"]
    table = result.stdout.splitlines()
    assert table[-6].startswith("setting") and "error" in table[-3]
    assert table[-2].endswith(f"{lines[3]['compile_s']:6.1f} {lines[3]['gc_full']:>7}")
    assert "@--xla_cpu" in table[-2]
    # The windows are timed with the heap frozen: the collector's runs are counted.
    assert all(r["gc_collections"] >= r["gc_full"] >= 0 and r["gc_ms"] >= 0
               for r in lines if "error" not in r)


def test_saved_files_are_read_plain_gzipped_or_xz(tmp_path):
    # A kept trace may be plain, gzipped (a GPU session's $OUT) or xz (benchmarks/traces):
    # each is unpacked beside itself; a folder with none of them names what it looked for.
    import gzip
    import lzma

    for suffix, opener in (("", open), (".gz", gzip.open), (".xz", lzma.open)):
        folder = tmp_path / (suffix.strip(".") or "plain")
        folder.mkdir()
        with opener(folder / f"trace.xplane.pb{suffix}", "wb") as f:
            f.write(b"\x00trace bytes")
        path = capture_lib._saved(folder, "trace.xplane.pb")
        assert path == folder / "trace.xplane.pb" and path.read_bytes() == b"\x00trace bytes"
    with pytest.raises(FileNotFoundError, match="nor step.hlo.txt.xz"):
        capture_lib._saved(tmp_path / "plain", "step.hlo.txt")


def test_library_call_after_follows_the_schedule():
    hlo = hlo_lib.parse_hlo(
        "HloModule m, is_scheduled=true\n\n"
        "body {\n  %a = f32[8] parameter(0)\n"
        "  %loop_add_fusion.1 = f32[8] fusion(%a), kind=kLoop, calls=%f\n"
        "  %bitcast.2 = f32[2,4] bitcast(%loop_add_fusion.1)\n"
        "  %custom-call.7 = (f32[2,2], s8[64]) custom-call(%bitcast.2, %bitcast.2), "
        "custom_call_target=\"__cublas$lt$matmul\"\n"
        "  ROOT %loop_exp_fusion = f32[8] fusion(%a), kind=kLoop, calls=%g\n}\n")
    fusion = hlo_lib.instruction_of(hlo, "kernel:loop_add_fusion_1")
    assert fusion is hlo.instructions["loop_add_fusion.1"]
    assert hlo_lib.library_call_after(hlo, fusion).name == "custom-call.7"
    assert hlo_lib.library_call_after(hlo, hlo.instructions["custom-call.7"]) is None
    assert hlo_lib.instruction_of(hlo, "kernel:nvjet_sm90_tst_128x128") is None


def test_pallas_kernels_are_found_by_their_own_names():
    # A Pallas kernel (atjax.kernels.attention) runs as a custom call whose trace kernels carry
    # the kernel's name from its backend config, not the instruction's; a cuBLAS kernel
    # after it is placed at the next library call, never at a Pallas call.
    pallas = ('custom_call_target="__gpu$xla.gpu.triton", metadata={{op_name='
              '"jit(train_step)/jvp(text_encoder)/layers/pallas_call"}}, backend_config='
              '{{debug = false, grid_x = 64 : i32, ir = "ML\\EFR", name = "{}", num_stages '
              '= 1 : i32, num_warps = 2 : i32}}')
    hlo = hlo_lib.parse_hlo(
        "HloModule m, is_scheduled=true\n\nENTRY main {\n"
        "  %qkv = bf16[64,32,48,64] parameter(0)\n  %bias = f32[64,32] parameter(1)\n"
        "  %pallas_call.2 = bf16[64,32,16,64] custom-call(%qkv, %bias), "
        + pallas.format("attention_forward") + "\n"
        "  %pallas_call.9 = bf16[64,32,16,64] custom-call(%qkv, %bias), "
        + pallas.format("attention_forward") + "\n"
        "  %custom-call.4 = (bf16[2048,1024], s8[64]) custom-call(%pallas_call.2), "
        "custom_call_target=\"__cublas$lt$matmul\"\n"
        "  ROOT %pallas_call.3 = bf16[64,32,48,64] custom-call(%qkv, %bias), "
        + pallas.format("attention_backward") + "\n}\n")
    forward = hlo_lib.instruction_of(hlo, "kernel:attention_forward")
    assert forward is hlo.instructions["pallas_call.2"]
    assert hlo_lib.instruction_of(hlo, "kernel:attention_backward").name == "pallas_call.3"
    assert hlo_lib.category(hlo, forward) == "pallas"
    assert hlo_lib.scope_of(forward.op_name) == ("text_encoder/layers", "forward")
    assert hlo_lib.bytes_accessed(hlo, forward) == (64 * 32 * 48 * 64 * 2 + 64 * 32 * 4
                                                        + 64 * 32 * 16 * 64 * 2)
    assert hlo_lib.library_call_after(hlo, forward).name == "custom-call.4"
    assert hlo_lib.library_call_after(hlo, hlo.instructions["custom-call.4"]) is None


def test_kept_h200_trace_places_cublas_kernels_of_command_buffers(tmp_path):
    # The 56115ca H200 trace kept in the repo: cuBLAS's kernels inside command buffers
    # carry neither an op nor a fusion's name, and took 1.73 ms per step unattributed.
    # Placed after their stream's previous kernel, they are the text encoder's dense
    # layers, whose arithmetic is then the analytic count (forward + twice for backward).
    import shutil

    from atjax.bench import flops
    from atjax.encoders import text as text_lib

    kept = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "traces" / \
        "h200_2026-11-26_56115ca_taps_copies"
    folder = tmp_path / "trace"
    folder.mkdir()
    for name in ("profile.json", "step.hlo.txt.xz", "trace.xplane.pb.xz"):
        shutil.copy(kept / name, folder / name)
    summary = capture_lib.reread(folder, top=5000, out=tmp_path / "new")
    assert sum(summary["by_scope"].get("unattributed", {"f": 0.0}).values()) < 0.1
    placed = [r for r in summary["top_ops"] if r["op"].startswith("custom-call.")]
    assert {r["scope"] for r in placed} == {"text_encoder/layers", "audio_encoder/frontend"}
    assert sum(r["calls_per_step"] for r in placed if r["scope"] == "text_encoder/layers") == 72
    analytic = 3 * 2 * 64 * flops.text_forward_macs(text_lib.preset("roberta-large"), 32)
    assert summary["rates_by_part"]["text_encoder/layers"]["tflop"] == pytest.approx(
        analytic / 1e12, rel=0.02)
    # The text layers' time grows by what was unattributed; the step's total stays.
    before = json.loads((kept / "profile.json").read_text())
    assert summary["device_op_ms"] == before["device_op_ms"]
    assert sum(summary["by_category"].values()) == pytest.approx(before["device_op_ms"],
                                                                 abs=5e-3)


def test_summary_of_unannotated_kernels():
    # A GPU trace whose kernels carry no op annotation: fusion kernels map back to their
    # HLO ops by name, library kernels are classed by name, and idle is wall minus busy.
    hlo = hlo_lib.Hlo({"loop_add_fusion.3": hlo_lib.Instruction(
        "loop_add_fusion.3", "add", "jit(train_step)/optimizer/add")}, {})
    times = {name: trace_lib.OpTime(name, ns, calls) for name, ns, calls in (
        ("kernel:loop_add_fusion_3", 4e6, 2), ("kernel:sm90_xmma_gemm_bf16bf16", 2e6, 2),
        ("kernel:cudnn_conv_fprop", 1e6, 2))}
    summary = attribution.summarize(times, hlo, steps=2, wall_s=0.008)
    assert summary["by_scope"]["optimizer"] == {"forward": 2.0, "backward": 0.0}
    assert summary["by_scope"]["unattributed"]["forward"] == 1.5
    assert summary["by_category"] == {"elementwise": 2.0, "matmul": 1.0, "convolution": 0.5}
    assert summary["step_ms"] == 4.0 and summary["device_idle_ms"] == 0.5
    assert [r["op"] for r in summary["top_ops"]][0] == "kernel:loop_add_fusion_3"


def test_busy_time_counts_concurrent_kernels_once():
    # Kernels of one CUDA graph can overlap: busy time is the union of their intervals,
    # while the op times still add up by category.
    assert trace_lib._union_ns([(0, 4), (2, 6), (10, 11), (3, 5)]) == 7
    assert trace_lib._union_ns([]) == 0
    times = {"kernel:loop_add_fusion_1": trace_lib.OpTime("kernel:loop_add_fusion_1", 6e6, 2),
             "kernel:nvjet_sm90_tst_128x128": trace_lib.OpTime("kernel:nvjet_sm90_tst_128x128",
                                                                 4e6, 2)}
    summary = attribution.summarize(times, hlo_lib.Hlo({}, {}), steps=2, wall_s=0.010,
                                    busy_ns=8e6, span_ns=9e6)
    assert summary["device_op_ms"] == 5.0 and summary["device_busy_ms"] == 4.0
    assert summary["device_idle_ms"] == 1.0 and summary["device_span_ms"] == 4.5
    assert summary["by_category"] == {"elementwise": 3.0, "matmul": 2.0}
    text = attribution.format_tables(summary)
    assert "device busy 4.00 ms, idle 1.00 ms; op time 5.00 ms" in text


def test_short_kernels_are_counted_by_their_mean_length():
    # Three ops over 2 steps: 4 kernels of 1.5 us, 2 of 4 us, 2 of 30 us. Each op is classed
    # by its mean kernel length, per step, and the short ones are also split by part.
    hlo = hlo_lib.Hlo({
        "loop_add_fusion.1": hlo_lib.Instruction(
            "loop_add_fusion.1", "add", "jit(train_step)/optimizer/add"),
        "input_reduce_fusion.2": hlo_lib.Instruction(
            "input_reduce_fusion.2", "reduce",
            "jit(train_step)/transpose(jvp(text_encoder))/layers/reduce_sum")}, {})
    times = {name: trace_lib.OpTime(name, ns, calls) for name, ns, calls in (
        ("kernel:loop_add_fusion_1", 4 * 1500, 4), ("kernel:input_reduce_fusion_2", 2 * 4000, 2),
        ("kernel:nvjet_sm90_tst_128x128", 2 * 30000, 2))}
    summary = attribution.summarize(times, hlo, steps=2, wall_s=1e-4)
    assert summary["kernels_per_step"] == 4.0
    assert summary["short_kernels"] == {"2": {"kernels": 2.0, "ms": 0.003},
                                        "5": {"kernels": 3.0, "ms": 0.007},
                                        "10": {"kernels": 3.0, "ms": 0.007}}
    assert summary["short_kernels_by_part"] == {
        "text_encoder/layers (backward)": {"kernels": 1.0, "ms": 0.004},
        "optimizer (forward)": {"kernels": 2.0, "ms": 0.003}}
    text = attribution.format_tables(summary)
    assert "short kernels (4 kernels per step in all" in text
    assert "    text_encoder/layers (backward)                    1     0.004" in text


# A module as `compiled.as_text()` prints it on a GPU: a fusion with two operands and a
# tuple result, a cuDNN convolution and a cuBLAS matmul returning scratch workspace as the
# last element of their tuples, a get-tuple-element printed with its operand's tuple type.
BYTES_HLO = """HloModule jit_f, entry_computation_layout={(f32[64,32]{1,0})->bf16[64,32]{1,0}}

%fused_add (param_0: f32[64,32], param_1.1: bf16[32]) -> (f32[64,32], bf16[64,32]) {
  %param_0 = f32[64,32]{1,0} parameter(0)
  %param_1.1 = bf16[32]{0} parameter(1)
  %convert.1 = f32[32]{0} convert(%param_1.1)
  %broadcast.1 = f32[64,32]{1,0} broadcast(%convert.1), dimensions={1}
  %add.1 = f32[64,32]{1,0} add(%param_0, %broadcast.1), metadata={op_name="jit(f)/add"}
  %convert.2 = bf16[64,32]{1,0} convert(%add.1)
  ROOT %tuple.1 = (f32[64,32]{1,0}, bf16[64,32]{1,0}) tuple(%add.1, %convert.2)
}

ENTRY %main.9 (x.1: f32[64,32], b.1: bf16[32], img.1: bf16[2,8,10,10]) -> bf16[64,32] {
  %x.1 = f32[64,32]{1,0} parameter(0), metadata={op_name="x"}
  %b.1 = bf16[32]{0} parameter(1)
  %img.1 = bf16[2,8,10,10]{3,2,1,0} parameter(2)
  %w.1 = bf16[16,8,3,3]{3,2,1,0} parameter(3)
  %w2.1 = f32[32,16]{1,0} parameter(4)
  %flags.1 = pred[64]{0} parameter(5)
  %fusion.1 = (f32[64,32]{1,0}, bf16[64,32]{1,0}) fusion(%x.1, %b.1), kind=kLoop, calls=%fused_add, metadata={op_name="jit(f)/jvp(audio_encoder)/stage1/add"}
  %cudnn-conv.1 = (bf16[2,16,10,10]{3,2,1,0}, u8[1048576]{0}) custom-call(%img.1, %w.1), window={size=3x3 pad=1_1x1_1}, dim_labels=bf01_oi01->bf01, custom_call_target="__cudnn$convForward", metadata={op_name="jit(f)/jvp(audio_encoder)/stage1/conv_general_dilated"}
  %custom-call.1 = (f32[64,16]{1,0}, s8[4194304]{0}) custom-call(%x.1, %w2.1), custom_call_target="__cublas$lt$matmul"
  %get-tuple-element.1 = bf16[2,16,10,10]{3,2,1,0} get-tuple-element((bf16[2,16,10,10]{3,2,1,0}, u8[1048576]{0}) %cudnn-conv.1), index=0
  %fusion.2 = (pred[64]{0}, c64[8]{0}, /*index=2*/s64[]) fusion(%flags.1, %flags.1, %nowhere.3), kind=kLoop, calls=%fused_add
  ROOT %get-tuple-element.2 = bf16[64,32]{1,0} get-tuple-element(%fusion.1), index=1
}
"""


def test_bytes_accessed_of_a_hand_written_module():
    hlo = hlo_lib.parse_hlo(BYTES_HLO)
    inst = hlo.instructions
    assert inst["fusion.1"].operands == ("x.1", "b.1")  # not its body's parameters
    assert inst["param_0"].operands == () and inst["add.1"].operands == ("param_0",
                                                                        "broadcast.1")
    assert inst["get-tuple-element.1"].operands == ("cudnn-conv.1",)
    assert inst["fusion.1"].shape == "(f32[64,32], bf16[64,32])"
    assert inst["fusion.2"].shape == "(pred[64], c64[8], s64[])"
    assert inst["fusion.1"].result_bytes == 64 * 32 * 4 + 64 * 32 * 2
    assert inst["cudnn-conv.1"].result_bytes == 2 * 16 * 10 * 10 * 2 + 1048576
    assert inst["w.1"].result_bytes == 16 * 8 * 3 * 3 * 2 and inst["x.1"].operands == ()
    # 64 bools, 8 complex64s, one int64.
    assert inst["fusion.2"].result_bytes == 64 * 1 + 8 * 8 + 8
    assert inst["fusion.1"].op_name == "jit(f)/jvp(audio_encoder)/stage1/add"
    assert inst["fusion.1"].calls == "fused_add"
    assert inst["cudnn-conv.1"].target == "__cudnn$convForward"

    def moved(name):
        return hlo_lib.bytes_accessed(hlo, inst[name])

    # Reads x (f32[64,32]) and b (bf16[32]), writes an f32 and a bf16 [64,32].
    assert moved("fusion.1") == (64 * 32 * 4 + 32 * 2) + (64 * 32 * 4 + 64 * 32 * 2)
    # Image and filter in, the output out; the u8 workspace left out.
    assert moved("cudnn-conv.1") == 2 * 8 * 10 * 10 * 2 + 16 * 8 * 3 * 3 * 2 + 2 * 16 * 10 * 10 * 2
    # cuBLAS's workspace is s8.
    assert moved("custom-call.1") == 64 * 32 * 4 + 32 * 16 * 4 + 64 * 16 * 4
    # An operand with a workspace counts without it.
    assert moved("get-tuple-element.1") == 2 * (2 * 16 * 10 * 10 * 2)
    # An operand read twice counts once, an unknown one 0.
    assert moved("fusion.2") == 64 + (64 + 8 * 8 + 8)
    assert moved("x.1") == 64 * 32 * 4


def test_summary_reports_the_bandwidth_of_each_op():
    hlo = hlo_lib.parse_hlo(BYTES_HLO)
    fusion = (64 * 32 * 4 + 32 * 2) + (64 * 32 * 4 + 64 * 32 * 2)
    conv = 2 * 8 * 10 * 10 * 2 + 16 * 8 * 3 * 3 * 2 + 2 * 16 * 10 * 10 * 2
    times = {t.name: t for t in (
        # a fusion in a command buffer, known by its kernel's name
        trace_lib.OpTime("kernel:fusion_1", ns=9e3, calls=4),
        # a convolution whose 2 runs launched 6 kernels (memsets, layout transforms)
        trace_lib.OpTime("cudnn-conv.1", ns=6e3, calls=6, runs=2),
        trace_lib.OpTime("kernel:nvjet_sm90_tst_128x128", ns=3e3, calls=2))}
    summary = attribution.summarize(times, hlo, steps=2, wall_s=1e-5)
    rows = {r["op"]: r for r in summary["top_ops"]}
    assert list(rows) == ["kernel:fusion_1", "cudnn-conv.1", "kernel:nvjet_sm90_tst_128x128"]
    row = rows["kernel:fusion_1"]
    assert row["bytes_per_call"] == fusion and row["shape"] == "(f32[64,32], bf16[64,32])"
    assert row["gb_per_s"] == pytest.approx(fusion * 4 / 9e3, abs=0.05)
    assert row["scope"] == "audio_encoder/stage1" and row["calls_per_step"] == 2
    row = rows["cudnn-conv.1"]
    assert row["bytes_per_call"] == conv and row["shape"] == "(bf16[2,16,10,10], u8[1048576])"
    assert row["gb_per_s"] == pytest.approx(conv * 2 / 6e3, abs=0.05)  # runs, not kernels
    assert row["calls_per_step"] == 3
    row = rows["kernel:nvjet_sm90_tst_128x128"]
    assert (row["bytes_per_call"], row["gb_per_s"], row["shape"]) == (None, None, "")
    lines = attribution.format_tables(summary).splitlines()
    at = lines.index(next(x for x in lines if x.startswith("heaviest ops")))
    assert "GB/s" in lines[at]
    assert f"{fusion * 4 / 9e3:7.0f} {'':7}  elementwise" in lines[at + 1]
    conv_flops = 2 * 2 * 16 * 8 * 28 * 28  # 3x3, padding 1, 10 x 10 image, 8 -> 16 channels
    assert rows["cudnn-conv.1"]["flop_per_call"] == conv_flops
    assert f"{conv * 2 / 6e3:7.0f} {conv_flops * 2 / 6e3 / 1e3:7.0f}  convolution" in lines[at + 2]
    assert f"{1.0:6.1f} {'':7} {'':7}  matmul" in lines[at + 3]  # no rates


def test_kernels_of_one_library_call_are_one_run(monkeypatch):
    # A cuDNN convolution launches several kernels that share its thunk's annotation range;
    # a command buffer's kernels, keyed by name, share the buffer's range but each is a run.
    def event(name, start, op, scope):
        return types.SimpleNamespace(name=name, start_ns=start, duration_ns=10.0,
                                     stats=[("hlo_op", op), ("scope_range_id", scope)])

    stream = [event("Memset", 0, "cudnn-conv.1", 7), event("nchwToNhwc", 20, "cudnn-conv.1", 7),
              event("implicit_gemm", 40, "cudnn-conv.1", 7),
              event("loop_add_fusion_3", 60, "command_buffer_1", 8),
              event("loop_add_fusion_3", 80, "command_buffer_1", 8),
              event("Memset", 100, "cudnn-conv.1", 9), event("implicit_gemm", 120,
                                                             "cudnn-conv.1", 9)]
    line = types.SimpleNamespace(name="Stream #14(Compute)", events=stream)
    plane = types.SimpleNamespace(name="/device:GPU:0", lines=[line])
    profile = types.SimpleNamespace(planes=[plane])
    monkeypatch.setattr(jax.profiler, "ProfileData",
                        types.SimpleNamespace(from_file=lambda path: profile))
    ops = trace_lib.device_op_times("unused.xplane.pb", module_hint="").ops
    assert (ops["cudnn-conv.1"].calls, ops["cudnn-conv.1"].runs) == (5, 2)
    assert (ops["kernel:loop_add_fusion_3"].calls, ops["kernel:loop_add_fusion_3"].runs) == (2, 2)


@pytest.mark.slow
def test_a_failing_profile_keeps_the_timings(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no device plane")

    monkeypatch.setattr(capture_lib, "capture", broken)
    assert bench.main(["--config", TINY, "--heads", "mlp", "--dtypes", "float32",
                       "--batch_size", "8", "--warmup", "1", "--steps", "2", "--repeats", "1",
                       "--sync_steps", "0", "--profile", "unused"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["step_ms"] > 0 and "error" not in line
    assert line["profile_error"] == "RuntimeError: no device plane"


FLOPS_HLO = """HloModule jit_g

%gemm_computation (p0: bf16[8,64], p1: bf16[64,32], p2: f32[32], p3: f32[32], p4: f32[32], /*index=5*/p5: f32[32]) -> bf16[8,32] {
  %p0 = bf16[8,64]{1,0} parameter(0)
  %p1 = bf16[64,32]{1,0} parameter(1)
  ROOT %dot.7 = bf16[8,32]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%after (q0: f32[4]) -> f32[4] {
  ROOT %q0 = f32[4]{0} parameter(0)
}

ENTRY %main.3 (a: bf16[8,64], b: bf16[64,32]) -> bf16[8,32] {
  %a = bf16[8,64]{1,0} parameter(0)
  %b = bf16[64,32]{1,0} parameter(1)
  %dy = bf16[2,10,7,5]{3,2,1,0} parameter(2)
  %w = bf16[5,3,3,3]{3,2,1,0} parameter(3)
  %x = bf16[2,10,7,3]{3,2,1,0} parameter(4)
  %gemm_fusion_dot.1 = bf16[8,32]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm_computation
  %custom-call.2 = (bf16[8,32]{1,0}, s8[1024]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_batch_dimensions":[],"lhs_contracting_dimensions":["1"],"rhs_batch_dimensions":[],"rhs_contracting_dimensions":["0"]}}}
  %cudnn-conv-bw-input.1 = (bf16[2,10,7,3]{3,2,1,0}, u8[64]{0}) custom-call(%dy, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %cudnn-conv-bw-filter.1 = (bf16[5,3,3,3]{3,2,1,0}, u8[64]{0}) custom-call(%x, %dy), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  ROOT %cudnn-conv.1 = (bf16[2,10,7,5]{3,2,1,0}, u8[64]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
}
"""


def test_flops_of_library_calls_and_fusions():
    hlo = hlo_lib.parse_hlo(FLOPS_HLO)
    # A header with six parameters numbers them in /*index=5*/: still a new computation.
    assert [i.name for i in hlo.computations["gemm_computation"]] == ["p0", "p1", "dot.7"]
    assert [i.name for i in hlo.computations["after"]] == ["q0"]
    flops = {name: hlo_lib.flops(hlo, hlo.instructions[name]) for name in (
        "gemm_fusion_dot.1", "custom-call.2", "cudnn-conv.1", "cudnn-conv-bw-input.1",
        "cudnn-conv-bw-filter.1", "a")}
    assert flops["gemm_fusion_dot.1"] == flops["custom-call.2"] == 2 * 8 * 32 * 64
    # The forward convolution, 3x3 with padding 1 on a 10 x 7 image: 3 * 10 - 2 taps of
    # rows and 3 * 7 - 2 of columns reach the image. All three passes count its work.
    forward = 2 * 2 * 5 * 3 * (3 * 10 - 2) * (3 * 7 - 2)
    assert flops["cudnn-conv.1"] == flops["cudnn-conv-bw-input.1"] == forward
    assert flops["cudnn-conv-bw-filter.1"] == forward
    assert flops["a"] is None


@pytest.mark.parametrize("stride,dilation,padding", [(1, 1, "SAME"), (2, 1, ((1, 0), (2, 2))),
                                                     (1, 2, "SAME"), (1, 1, "VALID")])
def test_flops_of_compiled_convolutions_and_dots_match_a_direct_count(stride, dilation, padding):
    # XLA:CPU's own HLO. The convolution's multiply-adds that read the image (not padding)
    # are counted independently: convolving an image of ones with a kernel of ones gives,
    # at each output, the taps that land on the image, times the input channels.
    x = jnp.ones((2, 13, 9, 3), jnp.float32)
    w = jnp.ones((3, 5, 3, 4), jnp.float32)

    def conv(a, k):
        return jax.lax.conv_general_dilated(a, k, (stride, stride), padding,
                                            rhs_dilation=(dilation, dilation),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def dot(a, b):
        return jnp.einsum("bmk,bkn->bmn", a, b)

    out = conv(x, w)
    macs = float(out.sum())  # sum over outputs and output channels of (taps x channels)
    hlo = hlo_lib.parse_hlo(jax.jit(conv).lower(x, w).compile().as_text())
    convs = [i for i in hlo.instructions.values() if i.opcode == "convolution"]
    assert len(convs) == 1
    assert hlo_lib.flops(hlo, convs[0]) == 2 * macs
    a, b = jnp.ones((3, 7, 11)), jnp.ones((3, 11, 5))
    hlo = hlo_lib.parse_hlo(jax.jit(dot).lower(a, b).compile().as_text())
    dots = [i for i in hlo.instructions.values() if i.opcode == "dot"]
    work = [hlo_lib.flops(hlo, i) for i in hlo.instructions.values()
            if i.opcode == "dot" or (i.calls and hlo_lib.flops(hlo, i))]
    assert dots and max(work) == 2 * 3 * 7 * 5 * 11


def test_summary_reports_tflops_and_rates_by_part():
    hlo = hlo_lib.parse_hlo(FLOPS_HLO)
    forward = 2 * 2 * 5 * 3 * 28 * 19
    # Nanosecond kernels, so that this small convolution shows tens of TFLOP/s.
    times = {t.name: t for t in (trace_lib.OpTime("cudnn-conv.1", ns=2.0, calls=3, runs=1),
                                 trace_lib.OpTime("cudnn-conv-bw-input.1", ns=1.0, calls=1),
                                 trace_lib.OpTime("x", ns=4.0, calls=1))}
    summary = attribution.summarize(times, hlo, steps=1, wall_s=1e-5)
    rows = {r["op"]: r for r in summary["top_ops"]}
    assert rows["cudnn-conv.1"]["flop_per_call"] == forward
    assert rows["cudnn-conv.1"]["tflop_per_s"] == pytest.approx(forward / 2.0 / 1e3, abs=0.05)
    assert rows["x"]["tflop_per_s"] is None and rows["x"]["gb_per_s"] == pytest.approx(
        2 * 10 * 7 * 3 * 2 / 4.0, abs=0.05)  # a parameter: its own bytes, read once
    part = summary["rates_by_part"]["other"]  # no scope in this module's op names
    assert part["tflop"] == pytest.approx(2 * forward / 1e12, rel=1e-5)
    assert part["tflop_per_s"] == pytest.approx(2 * forward / 3.0 / 1e3, abs=0.05)
    assert part["gb"] == pytest.approx(2 * 10 * 7 * 3 * 2 / 1e9, rel=1e-5)
    assert part["gb_per_s"] == pytest.approx(2 * 10 * 7 * 3 * 2 / 4.0, abs=0.05)
    assert "rates by part" in attribution.format_tables(summary)
