"""`python -m atjax.bench aot --target h200 --config configs/paper.py[:arg] [...]`

What the real training step compiles to on a GPU that is not attached. XLA compiles the
step (as `atjax.bench train_step` builds it: model, InfoNCE, optimizer, donated state) for
a described H100 or H200 ahead of time, on any machine, and this reports what the
compiled module would do, per setting, as one JSON line:

  - memory: XLA's buffer assignment (arguments, outputs, temporaries, peak), in GiB;
  - the kernels it launches by category (as atjax.bench.hlo names them), with the
    memory traffic their inputs and outputs imply (GB per step, `bytes_accessed`), and the
    same traffic by model part and direction;
  - the copies and the transposing kernels among them, counted with their traffic: work
    that moves data without computing, where a layout can often remove it.

It times nothing and autotunes nothing (there is no GPU to try cuDNN's or cuBLAS's
algorithms on), so a kernel's layout and fusion are XLA's, its algorithm a default, and
its peak memory somewhat under what the allocator reaches on the card. Its use: to see,
without a GPU, what a change does to the compiled step before it is timed on a GPU.

A GPU target needs JAX's CUDA plugin at jaxlib's version, not its CUDA libraries (`pip
install --no-deps jax-cuda12-plugin==V jax-cuda12-pjrt==V`, V = jaxlib.__version__);
`--target local` compiles for the attached devices instead, e.g. on a GPU machine or, to
check the command, on a CPU. `--hlo DIR` also writes each setting's compiled module.

Config overrides (`--config.field=value`) apply to every setting.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import pathlib
import re
import sys
import time

from atjax.bench import emit

# Public specifications of the cards the project times on. The compiler reads the number
# of SMs, shared memory and registers (launch shapes, fusion limits), the compute
# capability (which kernels exist) and the memory size; bandwidth and clock feed its cost
# model.
TARGETS = {
    "h100": {"description": "NVIDIA H100 80GB HBM3", "memory_bandwidth": 3_352_320_000_000,
             "device_memory_size": 84_929_347_584, "clock_rate_ghz": 1.98},
    "h200": {"description": "NVIDIA H200", "memory_bandwidth": 4_800_000_000_000,
             "device_memory_size": 150_754_820_096, "clock_rate_ghz": 1.98},
}
# Both are Hopper SXM parts (compute capability 9.0, 132 SMs, 50 MiB of L2).
_HOPPER = {"core_count": 132, "l2_cache_size": 52_428_800, "threads_per_block_limit": 1024,
           "threads_per_warp": 32, "shared_memory_per_block": 49_152,
           "shared_memory_per_core": 233_472, "shared_memory_per_block_optin": 232_448,
           "threads_per_core_limit": 2048, "fpus_per_core": 128,
           "block_dim_limit_x": 2_147_483_647, "block_dim_limit_y": 65_535,
           "block_dim_limit_z": 65_535, "registers_per_core_limit": 65_536,
           "registers_per_block_limit": 65_536}
# The CUDA runtime and cuDNN versions the compiler assumes (what JAX's CUDA 12 wheels ship).
_RUNTIME = (12, 8)
_CUDNN = (9, 7)
# Instructions that launch nothing: they name buffers or parts of them.
_STRUCTURAL = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast",
               "after-all", "partition-id", "replica-id"}


def target_config(name: str) -> str:
    """The GpuTargetConfig (protobuf text) that XLA compiles against for target `name`."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    spec = {**_HOPPER, **TARGETS[name]}
    fields = "\n".join(f"  {key}: {value}" for key, value in spec.items()
                       if key != "description")
    return (f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n}}\n"
            f"runtime_version {{ major: {_RUNTIME[0]} minor: {_RUNTIME[1]} patch: 0 }}\n"
            f'platform_name: "CUDA"\n'
            f"dnn_version_info {{ major: {_CUDNN[0]} minor: {_CUDNN[1]} }}\n"
            f'device_description_str: "{spec["description"]}"\n')


def target_devices(target: str, count: int = 1) -> list:
    """`count` compile-only devices of a described GPU, or the attached devices ("local")."""
    import jax

    if target == "local":
        return jax.devices()
    from jax.experimental import topologies

    config = target_config(target)
    try:
        topology = topologies.get_topology_desc(target, "cuda", target_config=config,
                                                topology=f"1x1x{count}")
    except Exception as e:  # no CUDA plugin: the message says which one to install
        import jaxlib
        raise RuntimeError(
            f"compiling for {target} needs JAX's CUDA plugin: pip install --no-deps "
            f"jax-cuda12-plugin=={jaxlib.__version__} jax-cuda12-pjrt=={jaxlib.__version__} "
            f"({type(e).__name__}: {e})") from e
    return list(topology.devices)


def target_context(devices):
    """A context to lower and compile in for `devices`: for compile-only GPUs, an abstract
    mesh of them. Pallas's Triton lowering (`atjax.kernels.attention`) reads the GPU it compiles
    for from the default device, a CPU here, unless an abstract mesh names another (jax
    0.11; jax 0.10 needs nothing), and XLA's partitioner lowers Pallas calls again while
    compiling."""
    import contextlib

    import jax
    import numpy as np

    from atjax import sharding

    if devices[0].platform == "cpu" or not hasattr(jax.sharding, "use_abstract_mesh"):
        return contextlib.nullcontext()
    # The step's own mesh (abstract_step's): jax 0.11 requires the two to be equal.
    mesh = jax.sharding.Mesh(np.array(devices), (sharding.DATA_AXIS,))
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def abstract_step(config, devices, text_length: int):
    """(the jitted train step, its arguments as shapes with shardings) for `config`
    (head, dtype and batch size set) on `devices`, the state replicated and the batch
    split as the trainer does. Nothing is initialised: the model is built as shapes."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh

    from atjax import model as model_lib
    from atjax import sharding
    from atjax import train_step as step_lib

    mesh = Mesh(np.array(devices), (sharding.DATA_AXIS,))
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    sharding.check_batch_size(config.batch_size, mesh)
    model = nnx.eval_shape(lambda: model_lib.build(config.model, seed=0))
    train_def, _, params, batch_stats, rest = step_lib.split_model(model)
    tx = step_lib.make_optimizer(config, params)
    state = jax.eval_shape(
        lambda p, b: step_lib.init_state(p, b, tx, step_lib.copies_dtype(config)),
        params, batch_stats)
    key = jax.eval_shape(lambda: step_lib.base_key(config))

    def placed(tree, where):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where),
                            tree)

    n = config.batch_size
    inputs = {"audio": jax.ShapeDtypeStruct((n, model_lib.clip_samples(config.model)),
                                            jnp.float32),
              "input_ids": jax.ShapeDtypeStruct((n, text_length), jnp.int32),
              "attention_mask": jax.ShapeDtypeStruct((n, text_length), jnp.int32)}
    step = step_lib.jit_train_step(train_def, tx, replicated, batch, replicated)
    return step, (placed(state, replicated), placed(inputs, batch), placed(rest, replicated),
                  placed(key, replicated))


def _entry(text: str) -> str:
    m = re.search(r"^ENTRY %?([^\s(]+)", text, re.MULTILINE)
    if m is None:
        raise ValueError("the module has no ENTRY computation")
    return m.group(1)


def module_summary(text: str) -> dict:
    """What a compiled module's entry computation launches: kernels by category, the
    traffic they imply (GB) by category and by model part, and the copies and
    transposing kernels among them."""
    from atjax.bench import hlo as hlo_lib

    hlo = hlo_lib.parse_hlo(text)
    ops = [i for i in hlo.computations[_entry(text)] if i.opcode not in _STRUCTURAL]
    kernels, traffic = collections.Counter(), collections.Counter()
    by_part = collections.defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    kernels_by_part = collections.defaultdict(lambda: {"forward": 0, "backward": 0})
    copies, transposes = [0, 0], [0, 0]
    for inst in ops:
        moved = hlo_lib.bytes_accessed(hlo, inst)
        cat = hlo_lib.category(hlo, inst)
        kernels[cat] += 1
        traffic[cat] += moved
        part, direction = hlo_lib.scope_of(hlo_lib.op_name_of(hlo, inst))
        by_part[part][direction] += moved / 1e9
        kernels_by_part[part][direction] += 1
        if inst.opcode == "copy":
            copies[0] += 1
            copies[1] += moved
        # A fusion whose hero is a transpose is named for it (input_transpose_fusion.3).
        elif inst.opcode == "transpose" or "transpose" in inst.name:
            transposes[0] += 1
            transposes[1] += moved

    def gb(x):  # to the kB: a tiny module's traffic stays visible
        return round(x / 1e9, 6)

    return {
        "kernels": sum(kernels.values()),
        "traffic_gb": gb(sum(traffic.values())),
        "kernels_by_category": dict(kernels.most_common()),
        "traffic_gb_by_category": {k: gb(v) for k, v in traffic.most_common()},
        "traffic_gb_by_part": {k: {d: round(v, 6) for d, v in parts.items()}
                               for k, parts in sorted(by_part.items(),
                                                      key=lambda kv: -sum(kv[1].values()))},
        # Kernels launched by part: most of a GPU step's kernels are short (a few us, see
        # atjax.bench.profile's short kernels), so their number is itself a cost.
        "kernels_by_part": {k: dict(v) for k, v in sorted(
            kernels_by_part.items(), key=lambda kv: -sum(kv[1].values()))},
        "copies": copies[0], "copies_gb": gb(copies[1]),
        "transposes": transposes[0], "transposes_gb": gb(transposes[1]),
    }


def memory_gib(compiled) -> dict:
    """XLA's buffer assignment of a compiled step, in GiB (peak where the backend has it)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # optional per backend
        return {}
    if stats is None:
        return {}
    out = {}
    for key in ("argument", "output", "alias", "temp"):
        value = getattr(stats, f"{key}_size_in_bytes", None)
        if value is not None:
            out[f"{key}_gib"] = round(value / 2**30, 3)
    peak = getattr(stats, "peak_memory_in_bytes", None)
    if peak:
        out["peak_gib"] = round(peak / 2**30, 3)
    return out


def run_setting(config, head: str, dtype: str, args, devices) -> dict:
    import jax

    from atjax.bench import train_step as bench

    print(f"[aot {args.target} {head}/{dtype}] building and compiling the step",
          file=sys.stderr, flush=True)
    config = bench.setting_config(config, head, dtype, args.batch_size)
    step, arguments = abstract_step(config, devices, args.text_length)
    start = time.perf_counter()
    with target_context(devices):  # compiling too: the partitioner lowers Pallas calls
        compiled = step.lower(*arguments).compile()
    compile_s = time.perf_counter() - start
    text = compiled.as_text()
    if args.hlo:
        folder = pathlib.Path(args.hlo)
        folder.mkdir(parents=True, exist_ok=True)
        label = "_".join([head, dtype] + [re.sub(r"[^\w.=-]", "_", o) for o in args.overrides])
        with gzip.open(folder / f"{label[:150]}.hlo.txt.gz", "wt") as f:
            f.write(text)
    return {"bench": "aot", "target": args.target, "device": devices[0].device_kind,
            "devices": len(devices), "jax": jax.__version__, "head": head, "dtype": dtype,
            "overrides": list(args.overrides), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "batch_size": args.batch_size,
            "text_length": args.text_length, "compile_s": round(compile_s, 1),
            **memory_gib(compiled), **module_summary(text)}


def format_result(r: dict) -> str:
    lines = [f"{r['target']} {r['head']}/{r['dtype']} {' '.join(r['overrides'])}".rstrip(),
             f"  memory: peak {r.get('peak_gib', '?')} GiB (arguments {r.get('argument_gib')}, "
             f"temporaries {r.get('temp_gib')}, outputs {r.get('output_gib')}, aliased "
             f"{r.get('alias_gib')})",
             f"  {r['kernels']} kernels, {r['traffic_gb']} GB; copies {r['copies']} "
             f"({r['copies_gb']} GB), transposing {r['transposes']} ({r['transposes_gb']} GB)",
             "  by category: " + ", ".join(
                 f"{k} {r['kernels_by_category'][k]} ({v} GB)"
                 for k, v in r["traffic_gb_by_category"].items()),
             "  GB by part (forward + backward), kernels by part (forward + backward):"]
    kernels = r.get("kernels_by_part", {})
    for part, v in r["traffic_gb_by_part"].items():
        k = kernels.get(part)
        count = f"   {k['forward']:6d} + {k['backward']:6d}" if k else ""
        lines.append(f"    {part:<34} {v['forward']:8.3f} + {v['backward']:8.3f}{count}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from atjax import config as config_lib

    argv = sys.argv[1:] if argv is None else argv
    spec, overrides, rest = config_lib.split_config_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m atjax.bench aot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="h200", choices=(*TARGETS, "local"))
    parser.add_argument("--devices", type=int, default=1,
                        help="GPUs of the described target the step is sharded over")
    parser.add_argument("--heads", default="mlp")
    parser.add_argument("--dtypes", default="bfloat16")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--text_length", type=int, default=32)
    parser.add_argument("--hlo", default=None, metavar="DIR",
                        help="also write each setting's compiled module here (gzipped)")
    parser.add_argument("--out", default=None, help="also append the JSON lines here")
    args = parser.parse_args(rest)
    args.overrides = overrides
    if args.target != "local":
        import jax

        # Compile-only devices need no CUDA: keep JAX from starting the CUDA plugin as a
        # backend (it fails without a driver); the compiler behind the topology still runs.
        jax.config.update("jax_platforms", "cpu")
    config = config_lib.load(spec or "configs/paper.py", overrides)
    devices = target_devices(args.target, args.devices)
    for head in args.heads.split(","):
        for dtype in args.dtypes.split(","):
            try:
                result = run_setting(config, head, dtype, args, devices)
            except Exception as e:  # one setting that does not compile must not hide the rest
                result = {"bench": "aot", "target": args.target, "head": head, "dtype": dtype,
                          "overrides": list(args.overrides),
                          "error": f"{type(e).__name__}: {str(e)[:500]}"}
                if "output tile sizes" in str(e):  # Triton tiling without autotuning
                    result["hint"] = ("rerun with XLA_FLAGS=--xla_gpu_enable_triton_gemm="
                                      "false (cuBLAS for every matmul)")
            emit(result, args.out)
            if "error" not in result:
                print(format_result(result), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
