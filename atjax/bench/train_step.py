"""`python -m atjax.bench train_step --config configs/paper.py[:arg] [...]`

Times the real training step (atjax.train_step: model, InfoNCE, optimizer, sharded over
every local device) on synthetic batches, for each Agg/Proj head and compute dtype, and
prints one JSON line per setting: device, step time, clips/s, analytic TFLOP per step
(XLA's own estimate beside it as a cross-check), achieved TFLOP/s and share of the card's
peak, peak device memory, and the host's share of a step. Needs no TensorFlow and no
weights (random init).

Steps are timed as the trainer runs them: dispatched back to back, the host never waiting
for a step before dispatching the next (the trainer reads metrics one step late).
`step_ms` is the steady state: each repeat times a window of `--steps` steps and one of
twice as many, both started on an idle device, and their difference per step cancels
what a window pays once (the host's latency before the first kernel), leaving what a long
run sees. `step_ms_window` is the shorter window's own time per step, which also holds the
host's latency before the first kernel. Beside those, `step_ms_sync` times steps that each
wait for their result (the host's dispatch then adds to the step), and `dispatch_ms` is how
long a call of the step takes to return on the host when nothing is queued: the host time
per step that asynchronous dispatch must hide. `dispatch_ms_queued` is the same in the
back-to-back windows, where a call also waits for room in the device's queue once the host
is ahead: there it equals the step time when the device is the bottleneck.

Python's garbage collector: a full collection walks every object of the process and comes
about every 30 steps (`python -m atjax.bench host_gc`); a pause of that size inside a
window would shift what it pays once. The timed windows therefore run with the heap frozen
(atjax.host_gc, as the trainer does), and `gc_collections`, `gc_full` (generation 2) and
`gc_ms` count the collector's runs inside them. docs/performance.md keeps what these
measures showed on GPUs.

`--profile DIR` then also traces a few steps and writes where the device time went
(atjax.bench.profile) to DIR.

Config overrides (`--config.field=value`) apply to every setting, e.g.
`--config.model.kernels=fast` or `--config.model.kernel_overrides.rng_impl=rbg`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

from atjax.bench import emit

# Measured dense bf16 matmul rates (TFLOP/s) used as "peak"; override with --peak_tflops.
PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0}


def _peak_for(device_kind: str) -> float | None:
    for name, value in PEAK_TFLOPS.items():
        if name in device_kind:
            return value
    return None


def _batch(rng, batch_size, num_samples, text_length, vocab_size, feature_dim=None):
    """Random inputs of the step's shapes; with `feature_dim`, a frozen text encoder's
    cached token features (model.text.feature_cache) in place of the token ids."""
    import numpy as np

    audio = rng.standard_normal((batch_size, num_samples), dtype=np.float32) * 0.1
    ids = rng.integers(5, vocab_size, (batch_size, text_length), dtype=np.int32)
    lengths = rng.integers(text_length // 2, text_length + 1, batch_size)
    mask = (np.arange(text_length)[None, :] < lengths[:, None]).astype(np.int32)
    if feature_dim:
        features = rng.standard_normal((batch_size, text_length, feature_dim), np.float32)
        return {"audio": audio, "text_features": features * mask[..., None],
                "attention_mask": mask}
    return {"audio": audio, "input_ids": ids * mask, "attention_mask": mask}


@dataclasses.dataclass
class Setup:
    """A compiled train step with its state and two synthetic global batches."""
    config: Any
    step_fn: Callable
    compiled: Any
    state: Any
    batches: list
    rest: Any
    key: Any
    num_samples: int
    compile_s: float
    metrics: Any = None  # the last step's metrics

    def run(self, count: int, *, sync: bool = False) -> tuple[list[float], list[float]]:
        """Runs `count` steps; returns (per-step wall times if sync, dispatch times)."""
        import jax

        walls, dispatches = [], []
        metrics = None
        for i in range(count):
            start = time.perf_counter()
            self.state, metrics = self.step_fn(self.state, self.batches[i % 2], self.rest,
                                               self.key)
            dispatches.append(time.perf_counter() - start)
            if sync:
                jax.block_until_ready(metrics["loss"])
                walls.append(time.perf_counter() - start)
        jax.block_until_ready((self.state, metrics))
        self.metrics = metrics
        return walls, dispatches


def time_windows(setup: Setup, steps: int, repeats: int
                 ) -> tuple[list[float], list[float], list[float]]:
    """Times `repeats` pairs of back-to-back windows, of `steps` and of 2 x `steps` steps,
    each started on an idle device; returns (steady-state seconds per step, seconds per
    step of the shorter windows, host seconds per dispatch).

    A window started on an idle device also holds the host's latency before the first
    kernel (or, where the host is the slower side, the device's time for the last step):
    a constant per window. The difference of the two windows cancels it, leaving what a
    long run sees per step: the device's step time, or the host's where that is longer.
    """
    if steps < 1 or repeats < 1:
        raise ValueError(f"time_windows needs steps and repeats >= 1, got {steps}, {repeats}")
    steady, cold, dispatches = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        _, dispatch = setup.run(steps)
        short = time.perf_counter() - start
        start = time.perf_counter()
        _, dispatch_long = setup.run(2 * steps)
        long = time.perf_counter() - start
        steady.append((long - short) / steps)
        cold.append(short / steps)
        dispatches += dispatch + dispatch_long
    return steady, cold, dispatches


def setting_config(config, head: str, dtype: str, batch_size: int):
    """A copy of `config` with one setting's head, compute dtype and batch size."""
    config = config.copy_and_resolve_references()
    config.unlock()
    config.model.head = head
    config.model.compute_dtype = dtype
    config.batch_size = batch_size
    return config


def prepare(config, head: str, dtype: str, batch_size: int, text_length: int) -> Setup:
    import numpy as np

    from atjax import model as model_lib
    from atjax import sharding
    from atjax import train_step as step_lib

    config = setting_config(config, head, dtype, batch_size)
    m = config.model
    mesh = sharding.make_mesh()
    model = model_lib.build(m, seed=0)
    train_def, _, params, batch_stats, rest = step_lib.split_model(model)
    del model
    tx = step_lib.make_optimizer(config, params)
    replicated = sharding.replicated(mesh)
    state = sharding.replicate(
        step_lib.init_state(params, batch_stats, tx, step_lib.copies_dtype(config)), mesh)
    rest = sharding.replicate(rest, mesh)
    key = sharding.replicate(step_lib.base_key(config), mesh)
    step_fn = step_lib.jit_train_step(train_def, tx, replicated,
                                      sharding.batch_sharded(mesh), replicated)
    num_samples = model_lib.clip_samples(m)
    text_cfg = model_lib.text_config(m)
    rng = np.random.default_rng(0)
    batches = [sharding.global_batch(
        _batch(rng, batch_size, num_samples, text_length, text_cfg.vocab_size,
               text_cfg.hidden_size if m.text.get("feature_cache") else None), mesh)
        for _ in range(2)]
    start = time.perf_counter()
    compiled = step_fn.lower(state, batches[0], rest, key).compile()
    compile_s = time.perf_counter() - start
    return Setup(config, step_fn, compiled, state, batches, rest, key, num_samples, compile_s)


def xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is optional per backend
        return None


def run_setting(config, head: str, dtype: str, args) -> dict:
    import jax

    from atjax import host_gc
    from atjax import model as model_lib
    from atjax.bench import flops as flops_lib

    def progress(message):  # stderr, so stdout stays one JSON line per setting
        print(f"[train_step {head}/{dtype}] {message}", file=sys.stderr, flush=True)

    progress("building and compiling the step")
    setup = prepare(config, head, dtype, args.batch_size, args.text_length)
    m = setup.config.model
    if args.compile_only:
        progress(f"compiled in {setup.compile_s:.1f} s (compile only)")
        return {"bench": "train_step", "head": head, "dtype": dtype,
                "overrides": list(args.overrides), "compile_only": True,
                "compile_s": round(setup.compile_s, 1)}
    progress(f"compiled in {setup.compile_s:.1f} s; timing {args.repeats} x {args.steps} "
             f"steps after {args.warmup} warm-up steps")
    setup.run(args.warmup)
    # As the trainer does: the objects alive now never stall a timed window in a full
    # collection of Python's garbage collector (atjax.host_gc); the runs left are counted.
    host_gc.freeze()
    try:
        with host_gc.Pauses() as pauses:
            windows, cold_windows, dispatches = time_windows(setup, args.steps, args.repeats)
            gc_counts = pauses.take()
            sync, sync_dispatches = (setup.run(args.sync_steps, sync=True)
                                     if args.sync_steps else ([], []))
    finally:  # a failing setting must not leave the next one's heap frozen
        host_gc.thaw()
    loss = float(setup.metrics["loss"])
    profiled = {}
    progress(f"{statistics.median(windows) * 1e3:.2f} ms per step")
    if args.profile:
        progress(f"tracing {args.profile_steps} steps into {args.profile}")
        from atjax.bench import capture as capture_lib
        folder = pathlib.Path(args.profile)
        try:
            setting = {"head": head, "dtype": dtype, "batch_size": args.batch_size,
                       "overrides": list(args.overrides)}
            summary = capture_lib.capture(setup, args.profile_steps, folder, setting=setting)
            profiled = {"profile": str(folder), "device_busy_ms": summary["device_busy_ms"],
                        "device_idle_ms": summary["device_idle_ms"]}
        except Exception as e:  # a trace that cannot be read must not cost the timings
            profiled = {"profile_error": f"{type(e).__name__}: {str(e)[:300]}"}
    step_s = statistics.median(windows)
    counted = flops_lib.train_step_flops(m, args.batch_size, setup.num_samples,
                                         args.text_length)
    xla = xla_flops(setup.compiled)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    peak = args.peak_tflops or _peak_for(device.device_kind)
    achieved = counted["total"] / step_s / 1e12
    return {
        "bench": "train_step", "device": device.device_kind, "devices": jax.device_count(),
        "jax": jax.__version__, "head": head, "dtype": dtype,
        "kernels": m.get("kernels"),
        "rng_impl": model_lib.kernels(m, setup.config).rng_impl,
        "overrides": list(args.overrides), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "batch_size": args.batch_size, "clip_seconds": setup.num_samples / m.audio.frontend.sample_rate,
        "text_length": args.text_length, "text_encoder": m.text.encoder,
        "step_ms": round(step_s * 1e3, 2), "step_ms_min": round(min(windows) * 1e3, 2),
        "step_ms_max": round(max(windows) * 1e3, 2),
        "step_ms_window": round(statistics.median(cold_windows) * 1e3, 2),
        "step_ms_sync": round(statistics.median(sync) * 1e3, 2) if sync else None,
        # The host's own time per call, read where nothing is queued (each step waited
        # for): in back-to-back windows a call also waits for room in the device's queue,
        # and its time converges to the step's when the device is the bottleneck.
        "dispatch_ms": round(statistics.median(sync_dispatches or dispatches) * 1e3, 3),
        "dispatch_ms_queued": round(statistics.median(dispatches) * 1e3, 3),
        "clips_per_s": round(args.batch_size / step_s, 1),
        "tflop_per_step": round(counted["total"] / 1e12, 3),
        "tflop_per_step_audio": round(counted["audio"] / 1e12, 3),
        "tflop_per_step_text": round(counted["text"] / 1e12, 3),
        "tflop_per_step_xla": round(xla / 1e12, 3) if xla else None,
        "achieved_tflops": round(achieved, 1),
        "peak_fraction": round(achieved / peak, 3) if peak else None,
        "peak_memory_gib": round(stats["peak_bytes_in_use"] / 2**30, 2)
        if "peak_bytes_in_use" in stats else None,
        "compile_s": round(setup.compile_s, 1),
        "loss": round(loss, 4),
        # Python's garbage collector in the timed windows (all of them together).
        **gc_counts,
        **profiled,
    }


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--text_length", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)


def main(argv=None) -> int:
    from atjax import config as config_lib

    argv = sys.argv[1:] if argv is None else argv
    spec, overrides, rest = config_lib.split_config_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m atjax.bench train_step",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", default="mlp,transformer")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    # Five: a median of three moves with a single stalled window.
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed pairs of windows (--steps and 2 x --steps steps)")
    parser.add_argument("--sync_steps", type=int, default=5,
                        help="steps timed one by one, each waiting for its result")
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--profile", default=None,
                        help="after timing, trace steps and write where the device time "
                             "went to this folder (atjax.bench.profile; one setting only)")
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument("--out", default=None, help="also append the JSON lines here")
    parser.add_argument("--compile_only", action="store_true",
                        help="only build and compile each setting (with JAX's persistent "
                             "compilation cache on, this fills it, so that a later timing "
                             "run loads the compiled step); prints compile_s, appends "
                             "nothing to --out")
    args = parser.parse_args(rest)
    args.overrides = overrides
    if args.profile and len(args.heads.split(",")) * len(args.dtypes.split(",")) > 1:
        parser.error("--profile writes one folder: give one head and one dtype")
    config = config_lib.load(spec or "configs/paper.py", overrides)
    for head in args.heads.split(","):
        for dtype in args.dtypes.split(","):
            try:
                result = run_setting(config, head, dtype, args)
            except Exception as e:  # one failing setting (e.g. out of memory) should not hide the rest
                result = {"bench": "train_step", "head": head, "dtype": dtype,
                          "overrides": list(overrides),
                          "error": f"{type(e).__name__}: {str(e)[:500]}"}
            emit(result, None if args.compile_only else args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
