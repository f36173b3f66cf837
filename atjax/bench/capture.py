"""Traces a few steps of a prepared train step and attributes their device time; or
attributes a saved trace again.

A profile folder holds profile.json (the summary, atjax.bench.attribution), profile.txt
(its tables), step.hlo.txt.gz (the compiled step) and trace.xplane.pb (the raw trace, for
TensorBoard or Perfetto).
"""

from __future__ import annotations

import gzip
import json
import lzma
import pathlib
import shutil
import tempfile
import time

from atjax.bench import attribution
from atjax.bench import hlo as hlo_lib
from atjax.bench import trace as trace_lib


def capture(setup, steps: int, out: pathlib.Path, *, setting: dict, top: int = 25) -> dict:
    """Traces `steps` steps of a prepared train step (atjax.bench.train_step.prepare) and
    writes profile.json, profile.txt, step.hlo.txt.gz and trace.xplane.pb to `out`.
    `setting` (head, dtype, overrides, ...) goes into profile.json as it is."""
    import jax

    out.mkdir(parents=True, exist_ok=True)
    hlo_text = setup.compiled.as_text()
    with gzip.open(out / "step.hlo.txt.gz", "wt") as f:
        f.write(hlo_text)
    trace_dir = pathlib.Path(tempfile.mkdtemp(prefix="atjax-trace-"))
    try:
        # Without Python's tracer: it slows the host enough to leave the device idle
        # within traced steps, which untraced steps are not. XLA's own host events
        # (launches, CUDA-graph updates) stay.
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0
        with jax.profiler.trace(str(trace_dir), profiler_options=options):
            start = time.perf_counter()
            setup.run(steps)
            wall = time.perf_counter() - start
        xplanes = sorted(trace_dir.rglob("*.xplane.pb"))
        if not xplanes:
            raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
        shutil.copy(xplanes[-1], out / "trace.xplane.pb")
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    hlo = hlo_lib.parse_hlo(hlo_text)
    device = trace_lib.device_op_times(out / "trace.xplane.pb", hlo=hlo)
    summary = {"bench": "profile", "device": jax.devices()[0].device_kind,
               "jax": jax.__version__, **setting, "compile_s": round(setup.compile_s, 1),
               "steps": steps, "timeline": device.source,
               **attribution.summarize(device.ops, hlo, steps, wall, top,
                           busy_ns=device.busy_ns, span_ns=device.span_ns)}
    (out / "profile.json").write_text(json.dumps(summary, indent=1))
    (out / "profile.txt").write_text(attribution.format_tables(summary) + "\n")
    return summary


def _saved(folder: pathlib.Path, name: str) -> pathlib.Path:
    """`folder/name`, or its `.gz` (as launch/gpu_bench.sh returns it) or `.xz` (as
    benchmarks/traces keeps a trace: a third of the size) unpacked beside it."""
    if (folder / name).exists():
        return folder / name
    for suffix, opener in ((".gz", gzip.open), (".xz", lzma.open)):
        packed = folder / f"{name}{suffix}"
        if packed.exists():
            with opener(packed, "rb") as src, open(folder / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return folder / name
    raise FileNotFoundError(f"{folder} has neither {name} nor {name}.gz nor {name}.xz")


def reread(folder: str | pathlib.Path, top: int = 25,
           out: str | pathlib.Path | None = None) -> dict:
    """Attributes a saved profile again with this reader: a folder as `capture` or
    launch/gpu_bench.sh leave it (profile.json, step.hlo.txt[.gz|.xz],
    trace.xplane.pb[.gz|.xz]). The setting and the host-clock step time come from its
    profile.json; profile.json and profile.txt are rewritten in `out` (made if missing),
    by default in `folder` itself. A saved trace outlives the machine it was taken on, and what the
    reader learns later (rates, attributions) then applies to it; `out` leaves a kept
    trace's files (benchmarks/traces/) as they are, e.g. for a longer `top` list."""
    folder = pathlib.Path(folder)
    out = folder if out is None else pathlib.Path(out)
    old = json.loads((folder / "profile.json").read_text())
    steps = old["steps"]
    hlo = hlo_lib.parse_hlo(_saved(folder, "step.hlo.txt").read_text())
    device = trace_lib.device_op_times(_saved(folder, "trace.xplane.pb"), hlo=hlo)
    fresh = attribution.summarize(device.ops, hlo, steps, old["step_ms"] * steps / 1e3, top,
                      busy_ns=device.busy_ns, span_ns=device.span_ns)
    summary = {**{k: v for k, v in old.items() if k not in fresh}, "timeline": device.source,
               **fresh}
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(summary, indent=1))
    (out / "profile.txt").write_text(attribution.format_tables(summary) + "\n")
    return summary
