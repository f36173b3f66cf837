"""`python -m atjax.bench train_step --config configs/paper.py[:arg] [...]`

Times the real training step (atjax.train_step: model, InfoNCE, optimizer, sharded over
every local device) on synthetic batches, for each Agg/Proj head and compute dtype, and
prints one JSON line per setting: device, step time, clips/s, analytic TFLOP per step
(XLA's own estimate beside it as a cross-check), achieved TFLOP/s and share of the card's
peak, and peak device memory. Needs no TensorFlow and no weights (random init).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

# Measured dense bf16 matmul rates (TFLOP/s) used as "peak"; override with --peak_tflops.
PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0}


def _peak_for(device_kind: str) -> float | None:
    for name, value in PEAK_TFLOPS.items():
        if name in device_kind:
            return value
    return None


def _batch(rng, batch_size, num_samples, text_length, vocab_size):
    import numpy as np

    audio = rng.standard_normal((batch_size, num_samples), dtype=np.float32) * 0.1
    ids = rng.integers(5, vocab_size, (batch_size, text_length), dtype=np.int32)
    lengths = rng.integers(text_length // 2, text_length + 1, batch_size)
    mask = (np.arange(text_length)[None, :] < lengths[:, None]).astype(np.int32)
    return {"audio": audio, "input_ids": ids * mask, "attention_mask": mask}


def run_setting(config, head: str, dtype: str, args) -> dict:
    import jax
    import numpy as np

    from atjax import model as model_lib
    from atjax import sharding
    from atjax import train_step as step_lib
    from atjax.bench import flops as flops_lib

    config = config.copy_and_resolve_references()
    config.unlock()
    config.model.head = head
    config.model.compute_dtype = dtype
    config.batch_size = args.batch_size
    m = config.model
    mesh = sharding.make_mesh()
    model = model_lib.build(m, seed=0)
    train_def, _, params, batch_stats, rest = step_lib.split_model(model)
    del model
    tx = step_lib.make_optimizer(config, params)
    replicated = sharding.replicated(mesh)
    state = sharding.replicate(step_lib.init_state(params, batch_stats, tx), mesh)
    rest = sharding.replicate(rest, mesh)
    key = sharding.replicate(jax.random.key(0), mesh)
    step_fn = step_lib.jit_train_step(train_def, tx, replicated,
                                      sharding.batch_sharded(mesh), replicated)
    num_samples = model_lib.clip_samples(m)
    text_cfg = model_lib.text_config(m)
    rng = np.random.default_rng(0)
    batches = [sharding.global_batch(
        _batch(rng, args.batch_size, num_samples, args.text_length, text_cfg.vocab_size), mesh)
        for _ in range(2)]

    compiled = step_fn.lower(state, batches[0], rest, key).compile()
    xla_flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is optional per backend
        pass
    for i in range(args.warmup):
        state, metrics = step_fn(state, batches[i % 2], rest, key)
    jax.block_until_ready(state)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batches[i % 2], rest, key)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    loss = float(metrics["loss"])
    step_s = statistics.median(times)
    counted = flops_lib.train_step_flops(m, args.batch_size, num_samples, args.text_length)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    peak = args.peak_tflops or _peak_for(device.device_kind)
    achieved = counted["total"] / step_s / 1e12
    return {
        "bench": "train_step", "device": device.device_kind, "devices": jax.device_count(),
        "head": head, "dtype": dtype, "batch_size": args.batch_size,
        "clip_seconds": num_samples / m.audio.frontend.sample_rate,
        "text_length": args.text_length, "text_encoder": m.text.encoder,
        "step_ms": round(step_s * 1e3, 2), "step_ms_min": round(min(times) * 1e3, 2),
        "clips_per_s": round(args.batch_size / step_s, 1),
        "tflop_per_step": round(counted["total"] / 1e12, 3),
        "tflop_per_step_audio": round(counted["audio"] / 1e12, 3),
        "tflop_per_step_text": round(counted["text"] / 1e12, 3),
        "tflop_per_step_xla": round(xla_flops / 1e12, 3) if xla_flops else None,
        "achieved_tflops": round(achieved, 1),
        "peak_fraction": round(achieved / peak, 3) if peak else None,
        "peak_memory_gib": round(stats["peak_bytes_in_use"] / 2**30, 2)
        if "peak_bytes_in_use" in stats else None,
        "loss": round(loss, 4),
    }


def main(argv=None) -> int:
    from atjax import config as config_lib

    argv = sys.argv[1:] if argv is None else argv
    spec, overrides, rest = config_lib.split_config_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m atjax.bench train_step",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", default="mlp,transformer")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--text_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--out", default=None, help="also append the JSON lines here")
    args = parser.parse_args(rest)
    config = config_lib.load(spec or "configs/paper.py", overrides)
    for head in args.heads.split(","):
        for dtype in args.dtypes.split(","):
            try:
                result = run_setting(config, head, dtype, args)
            except Exception as e:  # one failing setting (e.g. out of memory) should not hide the rest
                result = {"bench": "train_step", "head": head, "dtype": dtype,
                          "error": f"{type(e).__name__}: {str(e)[:500]}"}
            line = json.dumps(result)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
