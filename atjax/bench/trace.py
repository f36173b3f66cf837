"""Device time per op, read from a `jax.profiler` trace (`*.xplane.pb`).

The trace's device lines (GPU streams, a TPU's XLA Ops, a CPU's thunks) give each kernel or
op its time; `device_op_times` sums them by HLO op, and the busy time of the device as the
union of their intervals. `jax.profiler.ProfileData` reads the trace: no TensorBoard.
"""

from __future__ import annotations

import dataclasses
import pathlib

from atjax.bench import hlo as hlo_lib

# Lines of a device plane that repeat, grouped, what its stream lines already hold.
_DERIVED_LINES = ("XLA Modules", "Steps", "XLA TraceMe", "Framework Name Scope",
                  "Framework Ops", "Source code", "Launch Stats", "TensorFlow Name Scope",
                  "TensorFlow Ops")


@dataclasses.dataclass
class OpTime:
    name: str
    ns: float = 0.0
    calls: int = 0  # kernels (thunks on a CPU) timed
    # Executions of the op, where the trace tells them apart from its kernels (a cuDNN
    # convolution launches memsets, layout transforms and the convolution in one run);
    # 0: one per call.
    runs: int = 0


def _stat(event, key):
    for k, v in event.stats:
        if k == key:
            return v
    return None


def _exclusive(events: list) -> list[tuple[object, float]]:
    """(event, exclusive ns) for events of one line, nested events subtracted from their
    parents (CPU thunks nest inside control flow; GPU kernels on a stream never do)."""
    events = sorted(events, key=lambda e: (e.start_ns, -e.duration_ns))
    out, stack = [], []  # stack of [event, exclusive]
    for e in events:
        while stack and stack[-1][0].end_ns <= e.start_ns:
            out.append(tuple(stack.pop()))
        if stack:
            stack[-1][1] -= e.duration_ns
        stack.append([e, float(e.duration_ns)])
    out += [tuple(s) for s in reversed(stack)]
    return out


@dataclasses.dataclass
class DeviceTimes:
    """What a trace says of the device: time per op, and the device's busy time."""
    ops: dict[str, OpTime]
    source: str  # which timeline: "GPU streams", "XLA Ops", "CPU thunks", ...
    busy_ns: float = 0.0  # union of the ops' intervals (concurrent kernels counted once)
    span_ns: float = 0.0  # first op's start to last op's end


def _union_ns(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def device_op_times(xplane: str | pathlib.Path, module_hint: str = "train_step",
                    hlo: hlo_lib.Hlo | None = None) -> DeviceTimes:
    """Device time per HLO op (or per kernel name where a kernel carries no usable op)
    from a `jax.profiler` trace.

    GPU kernels are taken at their full duration: they never nest, but kernels of one
    CUDA graph may overlap, which the busy time (a union of intervals) counts once. XLA
    launches runs of thunks as CUDA graphs ("command buffers"): their kernels carry the
    command buffer's name instead of an HLO op, and are keyed by kernel name, which for
    XLA's fusions is the fusion's name. CPU thunks nest inside control flow and count
    their exclusive time. The kernels that one run of a library call (cuDNN, cuBLAS)
    launches share the annotation range of its thunk (`scope_range_id`): they count as
    one run of the op.

    A library's kernel inside a command buffer (cuBLAS's nvjet gemms) is named for
    neither its op nor a fusion. Given the compiled module (`hlo`), such a matmul or
    convolution kernel is taken for the first library call that the module schedules
    after the op of the kernel before it on its stream, instead of being left
    unattributed. Each such kernel counts as one run.
    """
    import jax

    data = jax.profiler.ProfileData.from_file(str(xplane))
    planes = list(data.planes)
    device = [p for p in planes if p.name.startswith(("/device:GPU", "/device:TPU"))]
    lines, source = [], ""
    for plane in device:
        streams = [ln for ln in plane.lines if ln.name.startswith("Stream")]
        ops = [ln for ln in plane.lines if ln.name == "XLA Ops"]
        if streams:
            lines += streams
            source = "GPU streams"
        elif ops:
            lines += ops
            source = "XLA Ops"
        else:
            lines += [ln for ln in plane.lines if ln.name not in _DERIVED_LINES]
            source = source or "device lines"
    if not lines:  # a CPU backend: XLA's thunks on the host's thread-pool lines
        lines = [ln for p in planes if p.name.startswith("/host:CPU") for ln in p.lines]
        source = "CPU thunks"
    result = DeviceTimes({}, source)
    intervals = []
    runs_seen: set[tuple[str, object]] = set()  # (op, range) of its thunk's runs
    for line in lines:
        events = list(line.events)
        if source == "CPU thunks":
            events = [e for e in events if _stat(e, "hlo_op") is not None]
            timed = _exclusive(events)
        else:
            timed = sorted(((e, float(e.duration_ns)) for e in events),
                           key=lambda pair: pair[0].start_ns)
        previous = None  # the instruction of this stream's last attributed kernel
        for event, ns in timed:
            module = _stat(event, "hlo_module")
            if module is not None and module_hint and module_hint not in str(module):
                continue
            op = _stat(event, "hlo_op")
            placed = False  # a library kernel placed by its neighbour
            if op is None or str(op).startswith("command_buffer"):
                key = f"kernel:{event.name}"
            else:
                key = str(op)
            if hlo is not None:
                inst = hlo_lib.instruction_of(hlo, key)
                if (inst is None and previous is not None and key.startswith("kernel:")
                        and hlo_lib.kernel_category(event.name) in ("matmul", "convolution")):
                    inst = hlo_lib.library_call_after(hlo, previous)
                    if inst is not None:
                        key, placed = inst.name, True
                previous = inst if inst is not None else previous
            t = result.ops.setdefault(key, OpTime(key))
            t.ns += max(ns, 0.0)
            t.calls += 1
            # A kernel keyed by name runs in a command buffer, whose one range covers all
            # its kernels (a loop's repeats too): each such kernel is a run.
            scope = _stat(event, "scope_range_id")
            if scope is None or key.startswith("kernel:") or placed:
                t.runs += 1
            elif (key, scope) not in runs_seen:
                t.runs += 1
                runs_seen.add((key, scope))
            intervals.append((float(event.start_ns), float(event.start_ns + event.duration_ns)))
    if intervals:
        result.busy_ns = _union_ns(intervals)
        result.span_ns = max(b for _, b in intervals) - min(a for a, _ in intervals)
    return result
