"""Where a step's device time goes: op times (atjax.bench.trace) attributed to categories,
to model parts and directions (atjax.bench.hlo), with the rates each part reaches, and the
tables that show them.
"""

from __future__ import annotations

import collections

from atjax.bench import hlo as hlo_lib
from atjax.bench import trace as trace_lib

# Kernel lengths (us) below which a kernel is counted as short: a kernel that moves a few
# MB, or launches a single thread, takes microseconds whatever its work, so many such
# kernels cost time that fewer, larger ones would not.
SHORT_KERNEL_US = (2, 5, 10)


def summarize(times: dict[str, trace_lib.OpTime], hlo: hlo_lib.Hlo, steps: int, wall_s: float,
              top: int = 25, *, busy_ns: float | None = None,
              span_ns: float | None = None) -> dict:
    """Per-step milliseconds by category, by model part and direction, and the top ops.

    Each op whose HLO instruction is known also gets its result shape, the bytes one run
    of it moves (`bytes_accessed`) and the rate its runs give over its device time (GB/s,
    mostly a lower bound of the kernels' bandwidth); for an unknown op, "" and None.

    `busy_ns` (the union of the ops' intervals, `DeviceTimes.busy_ns`) is the device's busy
    time; without it, the sum of the op times. Idle is the host-timed step minus busy.
    """
    by_category: dict[str, float] = collections.defaultdict(float)
    by_scope: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: {"forward": 0.0, "backward": 0.0})
    rows = []
    rates: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: {"flop_ms": 0.0, "tflop": 0.0, "memory_ms": 0.0, "gb": 0.0})
    short = {us: [0.0, 0.0] for us in SHORT_KERNEL_US}  # kernels, ms per step
    short_by_part: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for t in times.values():
        ms = t.ns / 1e6 / steps
        inst = hlo_lib.instruction_of(hlo, t.name)
        if inst is not None and inst.opcode in hlo_lib.CONTROL_FLOW:
            continue  # its body's ops are timed themselves (CPU runs them on other threads)
        if inst is not None:
            cat = hlo_lib.category(hlo, inst)
            op_name = hlo_lib.op_name_of(hlo, inst)
            scope, direction = hlo_lib.scope_of(op_name)
        elif t.name.startswith("kernel:"):
            cat = hlo_lib.kernel_category(t.name)
            scope, direction = "unattributed", "forward"
        else:
            cat, scope, direction = "other", "unattributed", "forward"
        by_category[cat] += ms
        by_scope[scope][direction] += ms
        # An op's kernels are classed by their mean length: the kernels of one fusion (or
        # of one library call) repeat with the steps and barely vary.
        kernel_us = t.ns / t.calls / 1e3 if t.calls else 0.0
        for us, tally in short.items():
            if kernel_us < us:
                tally[0] += t.calls / steps
                tally[1] += ms
        if kernel_us < SHORT_KERNEL_US[-1]:
            part = short_by_part[f"{scope} ({direction})"]
            part[0] += t.calls / steps
            part[1] += ms
        moved = hlo_lib.bytes_accessed(hlo, inst) if inst is not None else None
        work = hlo_lib.flops(hlo, inst) if inst is not None else None
        runs = t.runs or t.calls
        rate = rates[scope]
        if work is not None:
            rate["flop_ms"] += ms
            rate["tflop"] += work * runs / steps / 1e12
        elif moved is not None:
            rate["memory_ms"] += ms
            rate["gb"] += moved * runs / steps / 1e9
        rows.append({"op": t.name, "category": cat, "scope": scope, "direction": direction,
                     "ms_per_step": ms, "calls_per_step": t.calls / steps,
                     "op_name": op_name if inst is not None else "",
                     "shape": inst.shape[:60] if inst is not None else "",
                     "bytes_per_call": moved,
                     # bytes per nanosecond are GB/s
                     "gb_per_s": (round(moved * runs / t.ns, 1)
                                  if moved is not None and t.ns > 0 else None),
                     "flop_per_call": work,
                     # flop per nanosecond are GFLOP/s
                     "tflop_per_s": (round(work * runs / t.ns / 1e3, 1)
                                     if work is not None and t.ns > 0 else None)})
    op_ms = sum(by_category.values())
    busy = busy_ns / 1e6 / steps if busy_ns is not None else op_ms
    step_ms = wall_s * 1e3 / steps
    rows.sort(key=lambda r: -r["ms_per_step"])

    def rounded(d):
        return {k: round(v, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    return {
        "step_ms": round(step_ms, 3), "device_busy_ms": round(busy, 3),
        "device_idle_ms": round(step_ms - busy, 3),
        # Concurrent kernels (branches of a CUDA graph) make op time exceed busy time.
        "device_op_ms": round(op_ms, 3),
        "device_span_ms": round(span_ns / 1e6 / steps, 3) if span_ns is not None else None,
        "by_category": rounded(by_category),
        "by_scope": {k: {d: round(v, 3) for d, v in sorted(by.items())}
                     for k, by in sorted(by_scope.items(),
                                         key=lambda kv: -sum(kv[1].values()))},
        "rates_by_part": {k: {"flop_ms": round(r["flop_ms"], 3), "tflop": float(f"{r['tflop']:.6g}"),
                              "tflop_per_s": (round(r["tflop"] / r["flop_ms"] * 1e3, 1)
                                              if r["flop_ms"] > 0 else None),
                              "memory_ms": round(r["memory_ms"], 3), "gb": float(f"{r['gb']:.6g}"),
                              "gb_per_s": (round(r["gb"] / r["memory_ms"] * 1e3, 1)
                                           if r["memory_ms"] > 0 else None)}
                          for k, r in sorted(rates.items(),
                                             key=lambda kv: -kv[1]["flop_ms"] - kv[1]["memory_ms"])},
        "kernels_per_step": round(sum(t.calls for t in times.values()) / steps, 1),
        # Kernels shorter than each of SHORT_KERNEL_US (keys: us), and those shorter than
        # the last by part: how much of the step goes to kernels too small to fill the card.
        "short_kernels": {str(us): {"kernels": round(n, 1), "ms": round(v, 3)}
                          for us, (n, v) in short.items()},
        "short_kernels_by_part": {k: {"kernels": round(n, 1), "ms": round(v, 3)}
                                  for k, (n, v) in sorted(short_by_part.items(),
                                                          key=lambda kv: -kv[1][1])},
        "top_ops": [{**r, "ms_per_step": round(r["ms_per_step"], 3),
                     "calls_per_step": round(r["calls_per_step"], 2)} for r in rows[:top]],
    }


def format_tables(summary: dict) -> str:
    out = [f"step {summary['step_ms']:.2f} ms (host clock): device busy "
           f"{summary['device_busy_ms']:.2f} ms, idle {summary['device_idle_ms']:.2f} ms; "
           f"op time {summary['device_op_ms']:.2f} ms"]
    if summary.get("device_span_ms") is not None:
        out[0] += f"; first op to last {summary['device_span_ms']:.2f} ms"
    busy = summary["device_op_ms"] or 1.0
    out.append("\nby category               ms/step   share")
    for k, v in summary["by_category"].items():
        out.append(f"  {k:<22} {v:9.3f}  {100 * v / busy:5.1f}%")
    out.append("\nby part                   forward  backward     total")
    for k, v in summary["by_scope"].items():
        out.append(f"  {k:<22} {v['forward']:9.3f} {v['backward']:9.3f} "
                   f"{v['forward'] + v['backward']:9.3f}")
    if summary.get("rates_by_part"):
        out.append("\nrates by part: matmul and convolution ops (TFLOP/s), the other ops with a "
                   "known HLO op (GB/s)")
        out.append("  part                             flop ms    TFLOP TFLOP/s   other ms       GB"
                   "    GB/s")
        for k, r in summary["rates_by_part"].items():
            tf = f"{r['tflop_per_s']:7.0f}" if r.get("tflop_per_s") is not None else " " * 7
            gb = f"{r['gb_per_s']:7.0f}" if r.get("gb_per_s") is not None else " " * 7
            out.append(f"  {k[:32]:<32} {r['flop_ms']:8.3f} {r['tflop']:8.3f} {tf} "
                       f"{r['memory_ms']:10.3f} {r['gb']:8.3f} {gb}")
    if summary.get("short_kernels"):
        total = summary.get("kernels_per_step")
        out.append(f"\nshort kernels ({total:.0f} kernels per step in all; each op's kernels "
                   "by their mean length)" if total is not None else "\nshort kernels")
        out.append("  under         kernels/step   ms/step")
        for us, v in summary["short_kernels"].items():
            out.append(f"  {us + ' us':<12} {v['kernels']:14.0f} {v['ms']:9.3f}")
        out.append(f"  under {SHORT_KERNEL_US[-1]} us, by part")
        for k, v in list(summary.get("short_kernels_by_part", {}).items())[:12]:
            out.append(f"    {k[:44]:<44} {v['kernels']:6.0f} {v['ms']:9.3f}")
    out.append("\nheaviest ops                                   ms/step  calls    GB/s TFLOP/s  "
               "category      part")
    for r in summary["top_ops"]:
        rate = f"{r['gb_per_s']:7.0f}" if r.get("gb_per_s") is not None else " " * 7
        tf = f"{r['tflop_per_s']:7.0f}" if r.get("tflop_per_s") is not None else " " * 7
        out.append(f"  {r['op'][:44]:<44} {r['ms_per_step']:8.3f} {r['calls_per_step']:6.1f} "
                   f"{rate} {tf}  {r['category']:<13} {r['scope']} ({r['direction']})")
    return "\n".join(out)
