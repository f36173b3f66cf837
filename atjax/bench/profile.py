"""`python -m atjax.bench profile --config configs/paper.py[:arg] [...]`

Where a training step's device time goes. Compiles the real train step (as
`atjax.bench train_step` does), traces a few steps with `jax.profiler`, and attributes
every device op (every kernel on a GPU, every XLA op on a TPU, every thunk on a CPU) to:

  - a category, read from the compiled HLO: convolution, matmul, fft, rng (PRNG bits for
    dropout and SpecAugment), reduction (BatchNorm statistics, means), layout copies,
    collectives, elementwise, memcpy;
  - a part of the model and a direction, read from the op's name scope: the scopes that
    atjax.model, atjax.encoders and atjax.train_step open (audio_encoder/stage2,
    text_encoder/layers, loss, optimizer, ...), forward or backward (`transpose(...)`).

Each of the heaviest ops also shows its result shape and the memory traffic its inputs and
outputs imply, in GB/s of its device time: a kernel far below the card's bandwidth (an
H200 moves 3-4 TB/s in plain elementwise kernels) is a candidate for another layout,
fusion or algorithm. Matmuls and convolutions also show TFLOP/s, their arithmetic read
from the HLO shapes (cuDNN's forward and backward calls all count the forward
convolution's multiply-adds, without those on padding). The same two rates are summed by
model part.

It prints one JSON line (per-step milliseconds by category and by part, the heaviest ops,
the kernels shorter than 2, 5 and 10 us, and the time the device sat idle within a step) followed by readable tables, and writes
both, the compiled HLO and the raw trace (`*.xplane.pb`, for TensorBoard or Perfetto) to
--out. The trace needs no TensorBoard: `jax.profiler.ProfileData` reads it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import lzma
import math
import pathlib
import re
import shutil
import sys
import tempfile
import time

# Scopes opened by the model code, in the order they run.
TOP_SCOPES = ("audio_encoder", "audio_head", "text_encoder", "text_head", "loss", "optimizer")

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*(?P<type>.*?)\s(?P<opcode>[a-z][a-z0-9\-]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[^\s(]+)\s.*\{\s*$")
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
                "all-to-all")
# jax.random's functions, as they appear in op names. A fusion makes random bits when it
# runs their hashing (threefry's and philox's rounds both xor; converting bits to floats,
# comparing and selecting do not): the backward pass re-derives dropout masks from saved
# bits with compares and selects, which is elementwise work, not bit making.
_RNG_SCOPES = ("threefry", "random_bits", "rng_bit_generator", "_uniform", "_bernoulli",
               "_randint", "_normal")
# Threefry's rounds: 32-bit adds, rotations (two shifts and an or) and xors. In the GPU
# module the fused rounds carry their caller's name (".../stage1/xor"), not the PRNG's,
# so a fusion is told by these opcodes together on unsigned 32-bit values.
_THREEFRY_OPCODES = frozenset({"xor", "shift-left", "shift-right-logical"})
# Bits per element of HLO's element types (f4e2m1fn, s4 and u4 pack two to a byte).
_ELEMENT_BITS = {
    "pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "f16": 16,
    "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64, "c64": 64,
    "c128": 128, "f4e2m1fn": 4, "f8e3m4": 8, "f8e4m3": 8, "f8e4m3fn": 8, "f8e4m3fnuz": 8,
    "f8e4m3b11fnuz": 8, "f8e5m2": 8, "f8e5m2fnuz": 8, "f8e8m0fnu": 8}
# An array in an HLO type: `bf16[64,1001,64,64]` (a scalar is `f32[]`, a bounded dynamic
# dimension `<=128`); the longest names first, so that `f8e4m3fnuz` is not read as `f8e4m3`.
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_ELEMENT_BITS, key=len, reverse=True))
                    + r")\[([^\]]*)\]")
_PAREN = re.compile(r"[()]")
_FLOP_OPCODES = ("convolution", "dot", "custom-call")
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_LAYOUT = {"copy", "transpose", "bitcast", "reshape", "copy-start", "copy-done"}
_CONTROL_FLOW = {"while", "conditional", "call", "async-start", "async-done"}
# Lines of a device plane that repeat, grouped, what its stream lines already hold.
# Kernel lengths (us) below which a kernel is counted as short: on an H200 a kernel that
# moves a few MB, or launches a single thread, takes 1-10 us whatever its work, so many
# such kernels cost time that fewer, larger ones would not (taps + weight copies, 56115ca:
# 1,814 of 2,682 kernels per step under 10 us, 5.8 ms of 43.4 ms of op time).
SHORT_KERNEL_US = (2, 5, 10)
_DERIVED_LINES = ("XLA Modules", "Steps", "XLA TraceMe", "Framework Name Scope",
                  "Framework Ops", "Source code", "Launch Stats", "TensorFlow Name Scope",
                  "TensorFlow Ops")


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    op_name: str = ""
    target: str = ""
    calls: str = ""
    shape: str = ""  # the result type without layouts: "(f32[64,1024], u8[4096])"
    result_bytes: int = 0  # the bytes of every array of the result, tuples summed
    operands: tuple[str, ...] = ()  # the instructions it reads, by name, in order
    # The text after the operand list, kept for convolutions, dots and library calls only:
    # their window, dimension labels and contracting dimensions give their FLOPs.
    attributes: str = ""


@dataclasses.dataclass
class Hlo:
    instructions: dict[str, Instruction]
    computations: dict[str, list[Instruction]]
    # Pallas kernels (`atjax.attention`) by the name their kernels carry in a trace: the
    # `name` in the custom call's backend config, not the instruction's; the first of each.
    kernels: dict[str, Instruction] = dataclasses.field(default_factory=dict)


# The custom call that runs a Pallas kernel compiled by XLA's Triton pipeline.
PALLAS_TARGET = "__gpu$xla.gpu.triton"


def _array_bytes(element: str, dims: str) -> int:
    """The bytes of one array of an HLO type, from its element type and its dimensions
    ("64,1001,64,64"; "" for a scalar; "<=128" for a bounded dynamic one, at its bound)."""
    n = 1
    for d in dims.split(","):
        if d.strip():
            n *= int(d.strip().lstrip("<="))
    return (n * _ELEMENT_BITS[element] + 7) // 8


def parse_hlo(text: str) -> Hlo:
    """Instructions of an HLO module's text (`compiled.as_text()`), by name, and the
    instructions of each computation (to look inside fusions).

    Each instruction keeps its result's type and size and the names of its operands: the
    `%name` references of the parenthesised list after the opcode (HLO names are unique in
    a module, so a fusion's operands are found among the instructions of the computation
    that runs it, never among its fused body's parameters)."""
    instructions: dict[str, Instruction] = {}
    computations: dict[str, list[Instruction]] = collections.defaultdict(list)
    kernels: dict[str, Instruction] = {}
    current = ""
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None:
            c = _COMPUTATION.match(line)
            # A header with six or more parameters numbers them in comments (/*index=5*/),
            # which must not read as an instruction's "=".
            if c is not None and "=" not in re.sub(r"/\*.*?\*/", "", line).split("{")[0]:
                current = c.group("name")
            continue
        result = m.group("type")
        # The operand list ends at the parenthesis that closes the opcode's; an operand
        # printed with its (tuple) type may nest parentheses.
        depth, end = 1, len(line)
        for p in _PAREN.finditer(line, m.end()):
            depth += 1 if p.group() == "(" else -1
            if depth == 0:
                end = p.start()
                break
        inst = Instruction(
            m.group("name"), m.group("opcode"),
            shape=re.sub(r"\{[^{}]*\}|/\*.*?\*/", "", result),
            result_bytes=sum(_array_bytes(e, d) for e, d in _ARRAY.findall(result)),
            operands=tuple(re.findall(r"%([^\s,()]+)", line[m.end():end])),
            attributes=line[end:] if m.group("opcode") in _FLOP_OPCODES else "")
        if (op := re.search(r'op_name="([^"]*)"', line)) is not None:
            inst.op_name = op.group(1)
        if (t := re.search(r'custom_call_target="([^"]*)"', line)) is not None:
            inst.target = t.group(1)
            if inst.target == PALLAS_TARGET and (
                    k := re.search(r'\bname = "([^"]+)"', line)) is not None:
                kernels.setdefault(k.group(1), inst)
        if (calls := re.search(r"calls=%?([\w.\-]+)", line)) is not None:
            inst.calls = calls.group(1)
        instructions[inst.name] = inst
        computations[current].append(inst)
    return Hlo(instructions, dict(computations), kernels)


def _data_bytes(inst: Instruction) -> int:
    """An instruction's result bytes less the scratch workspace that a library call
    returns as the last element of its tuple (cuDNN's `u8[...]`, cuBLAS's `s8[...]`): it
    is sized for the fastest algorithm, not read or written in full, and would dwarf the
    data of a small convolution."""
    if inst.opcode == "custom-call" and inst.shape.startswith("("):
        arrays = _ARRAY.findall(inst.shape)
        if len(arrays) > 1 and arrays[-1][0] in ("u8", "s8"):
            return inst.result_bytes - _array_bytes(*arrays[-1])
    return inst.result_bytes


def bytes_accessed(hlo: Hlo, inst: Instruction) -> int:
    """The memory traffic an op implies: its operands' bytes (each distinct operand once;
    one whose type is unknown counts 0) plus its result's, library workspaces left out.

    It is what the kernel would move reading each input and writing each output once: a
    lower bound for most kernels, as a fusion that reads an operand twice or a matmul or
    convolution that re-reads tiles moves more. It overstates the traffic of ops that touch
    only part of a buffer: a slice or gather reading part of an operand, a
    dynamic-update-slice writing a few rows of a buffer updated in place.
    """
    operands = (hlo.instructions.get(name) for name in dict.fromkeys(inst.operands))
    return sum(_data_bytes(o) for o in operands if o is not None) + _data_bytes(inst)


def _dims(hlo: Hlo, name: str, array: int = 0) -> list[int] | None:
    """The dimensions of one array (the first of a tuple) of an instruction's result."""
    inst = hlo.instructions.get(name)
    arrays = _ARRAY.findall(inst.shape) if inst is not None else []
    if len(arrays) <= array:
        return None
    return [int(d.strip().lstrip("<=")) for d in arrays[array][1].split(",") if d.strip()]


def _window_pairs(size: int, out: int, window: int, pad_low: int, stride: int,
                  lhs_dilation: int, rhs_dilation: int) -> int:
    """How many (output position, window tap) pairs of one spatial dimension read a real
    input element, not padding or a dilation hole."""
    pairs = 0
    for o in range(out):
        for w in range(window):
            p = o * stride + w * rhs_dilation - pad_low
            if p >= 0 and p % lhs_dilation == 0 and p // lhs_dilation < size:
                pairs += 1
    return pairs


def _convolution_flops(hlo: Hlo, inst: Instruction, kind: str) -> float | None:
    """2 x the multiply-adds of the forward convolution that a convolution op, or a cuDNN
    forward / backward-input / backward-filter call, computes (XLA writes all three with
    the forward convolution's window and dimension labels). Taps that fall on padding are
    not counted: on small images (ResNet38's last stages are 31 x 2) they are many."""
    labels = _DIM_LABELS.search(inst.attributes)
    window = _WINDOW.search(inst.attributes)
    if labels is None or window is None or len(inst.operands) < 2:
        return None
    lhs_labels, _, out_labels = labels.groups()
    # The forward convolution's input x and output y, whichever the op computes.
    x, y = {"forward": (_dims(hlo, inst.operands[0]), _dims(hlo, inst.name)),
            "input": (_dims(hlo, inst.name), _dims(hlo, inst.operands[0])),
            "filter": (_dims(hlo, inst.operands[0]), _dims(hlo, inst.operands[1]))}[kind]
    if x is None or y is None or len(x) != len(lhs_labels) or len(y) != len(out_labels):
        return None
    fields = dict(re.findall(r"(\w+)=(\S+)", window.group(1)))
    spatial = len(lhs_labels) - 2

    def per_dim(key, default):
        values = fields.get(key)
        return [default] * spatial if values is None else values.split("x")

    sizes = [int(v) for v in per_dim("size", "1")]
    pads = [int(v.split("_")[0]) for v in per_dim("pad", "0_0")]
    strides = [int(v) for v in per_dim("stride", "1")]
    lhs_dil = [int(v) for v in per_dim("lhs_dilate", "1")]
    rhs_dil = [int(v) for v in per_dim("rhs_dilate", "1")]
    groups = int(m.group(1)) if (m := re.search(r"feature_group_count=(\d+)",
                                                  inst.attributes)) else 1
    macs = x[lhs_labels.index("f")] // groups * y[out_labels.index("f")] \
        * y[out_labels.index("b")]
    for d in range(spatial):
        macs *= _window_pairs(x[lhs_labels.index(str(d))], y[out_labels.index(str(d))],
                              sizes[d], pads[d], strides[d], lhs_dil[d], rhs_dil[d])
    return 2.0 * macs


def _dot_flops(hlo: Hlo, inst: Instruction) -> float | None:
    """2 x the multiply-adds of a dot or a cuBLAS matmul call: result elements times the
    product of the left operand's contracting dimensions."""
    out, lhs = _dims(hlo, inst.name), _dims(hlo, inst.operands[0]) if inst.operands else None
    m = (re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst.attributes)
         or re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', inst.attributes))
    if out is None or lhs is None or m is None:
        return None
    contracted = 1
    for d in re.findall(r"\d+", m.group(1)):
        contracted *= lhs[int(d)]
    return 2.0 * math.prod(out) * contracted


def flops(hlo: Hlo, inst: Instruction) -> float | None:
    """The arithmetic of a convolution or matmul op, 2 per multiply-add: the op itself (an
    HLO convolution or dot, a cuDNN convolution or cuBLAS matmul call) or the dots and
    convolutions inside a fusion (XLA's Triton GEMMs). None for other ops."""
    if inst.opcode == "convolution":
        return _convolution_flops(hlo, inst, "forward")
    if inst.opcode == "dot":
        return _dot_flops(hlo, inst)
    if inst.opcode == "custom-call":
        kind = {"__cudnn$convForward": "forward", "__cudnn$convBiasActivationForward":
                "forward", "__cudnn$convBackwardInput": "input",
                "__cudnn$convBackwardFilter": "filter"}.get(inst.target)
        if kind is not None:
            return _convolution_flops(hlo, inst, kind)
        if "cublas" in inst.target or "matmul" in inst.target or "gemm" in inst.target:
            return _dot_flops(hlo, inst)
        return None
    if inst.calls:
        parts = [flops(hlo, i) for i in _body(hlo, inst) if i.opcode in _FLOP_OPCODES]
        parts = [f for f in parts if f is not None]
        return sum(parts) if parts else None
    return None


def _body(hlo: Hlo, inst: Instruction, depth: int = 0) -> list[Instruction]:
    """The instructions a fusion (or call) runs, nested fusions included."""
    if not inst.calls or depth > 4:
        return [inst]
    out = []
    for child in hlo.computations.get(inst.calls, []):
        out += _body(hlo, child, depth + 1) if child.calls else [child]
    return out or [inst]


def op_name_of(hlo: Hlo, inst: Instruction) -> str:
    """The op's scope path; for a fusion without one, the most common among its body's."""
    if inst.op_name:
        return inst.op_name
    names = collections.Counter(i.op_name for i in _body(hlo, inst) if i.op_name)
    return names.most_common(1)[0][0] if names else ""


def category(hlo: Hlo, inst: Instruction) -> str:
    body = _body(hlo, inst)
    opcodes = {i.opcode for i in body}
    targets = " ".join(i.target for i in body).lower()
    if any(c in op for op in opcodes for c in _COLLECTIVES):
        return "collective"
    if "convolution" in opcodes or "conv" in targets:
        return "convolution"
    if PALLAS_TARGET.lower() in targets:
        return "pallas"
    if "dot" in opcodes or any(k in targets for k in ("gemm", "matmul", "cublas", "triton")):
        return "matmul"
    if "fft" in opcodes or "fft" in targets:
        return "fft"
    if "rng-bit-generator" in opcodes or "threefry" in targets or any(
            i.opcode == "xor" and any(key in i.op_name for key in _RNG_SCOPES) for i in body):
        return "rng"
    if _THREEFRY_OPCODES <= opcodes and any(
            i.opcode == "xor" and i.shape.startswith("u32") for i in body):
        return "rng"
    if "reduce" in opcodes or "reduce-window" in opcodes:
        return "reduction"
    if opcodes <= _LAYOUT | {"parameter", "constant", "tuple", "get-tuple-element"}:
        return "layout copy"
    return "elementwise"


def _kernel_category(kernel: str) -> str:
    """A library kernel's category from its name (cuDNN, cuBLAS's nvjet/xmma gemms, ...)."""
    k = kernel.lower()
    for key, cat in (("conv", "convolution"), ("cudnn", "convolution"),
                     ("implicit_gemm", "convolution"), ("nchwtonhwc", "layout copy"),
                     ("nhwctonchw", "layout copy"), ("gemm", "matmul"), ("nvjet", "matmul"),
                     ("xmma", "matmul"), ("fft", "fft"), ("threefry", "rng"),
                     ("philox", "rng"), ("reduce", "reduction"), ("memcpy", "memcpy"),
                     ("memset", "memset"), ("transpose", "layout copy")):
        if key in k:
            return cat
    return "elementwise"


def instruction_of(hlo: Hlo, key: str) -> Instruction | None:
    """The HLO instruction an op key names: an instruction's name, or "kernel:NAME" for a
    kernel that XLA named after its fusion, with "_" for the "." of its number
    (loop_add_fusion_3: loop_add_fusion.3), or for a Pallas kernel, by its own name."""
    inst = hlo.instructions.get(key)
    if inst is None and key.startswith("kernel:"):
        inst = hlo.instructions.get(re.sub(r"_(\d+)$", r".\1", key[len("kernel:"):]))
        if inst is None:  # a Pallas kernel, named as its pallas_call names it
            inst = hlo.kernels.get(key[len("kernel:"):])
    return inst


# Instructions that run as a library's kernels (cuBLAS, cuDNN, cuFFT), not XLA's own.
_LIBRARY_OPCODES = ("custom-call", "convolution", "dot", "fft")


def library_call_after(hlo: Hlo, previous: Instruction) -> Instruction | None:
    """The first library call scheduled after `previous` in its computation (a compiled
    module's computations list their instructions in schedule order), or None. A Pallas
    kernel's custom call is not one: its kernels carry their own name."""
    for instructions in hlo.computations.values():
        for i, inst in enumerate(instructions):
            if inst is previous:
                return next((j for j in instructions[i + 1:] if j.opcode in _LIBRARY_OPCODES
                             and j.target != PALLAS_TARGET), None)
    return None


_WRAPPER = re.compile(r"^(\w+)\((.*)\)$")


def scope_of(op_name: str) -> tuple[str, str]:
    """("audio_encoder/stage2" | "other", "forward" | "backward") from an op_name such as
    `jit(train_step)/transpose(jvp(audio_encoder))/stage2/conv_general_dilated`."""
    backward = "transpose(" in op_name
    parts = []
    for component in op_name.split("/"):
        # Unwrap transformation wrappers: transpose(jvp(audio_encoder)) -> audio_encoder.
        while (m := _WRAPPER.match(component)) is not None:
            if m.group(1) == "jit":  # jit(train_step), jit(main): not model scopes
                component = ""
                break
            component = m.group(2)
        if component:
            parts.append(component)
    for i, part in enumerate(parts):
        if part in TOP_SCOPES:
            sub = parts[i + 1] if i + 2 < len(parts) else ""  # the last part is the op
            return (f"{part}/{sub}" if sub and part in ("audio_encoder", "text_encoder")
                    else part), ("backward" if backward else "forward")
    return "other", ("backward" if backward else "forward")


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
                    hlo: Hlo | None = None) -> DeviceTimes:
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
    after the op of the kernel before it on its stream. In the 56115ca trace these were
    1.67 ms per step that the reader otherwise leaves unattributed: 72 cuBLAS gemms per
    step of the text encoder's layers (1.56 ms) and the frontend's mel projection (0.10
    ms). Each such kernel counts as one run.
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
                inst = instruction_of(hlo, key)
                if (inst is None and previous is not None and key.startswith("kernel:")
                        and _kernel_category(event.name) in ("matmul", "convolution")):
                    inst = library_call_after(hlo, previous)
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


def summarize(times: dict[str, OpTime], hlo: Hlo, steps: int, wall_s: float,
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
        inst = instruction_of(hlo, t.name)
        if inst is not None and inst.opcode in _CONTROL_FLOW:
            continue  # its body's ops are timed themselves (CPU runs them on other threads)
        if inst is not None:
            cat = category(hlo, inst)
            op_name = op_name_of(hlo, inst)
            scope, direction = scope_of(op_name)
        elif t.name.startswith("kernel:"):
            cat = _kernel_category(t.name)
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
        moved = bytes_accessed(hlo, inst) if inst is not None else None
        work = flops(hlo, inst) if inst is not None else None
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
        # Without Python's tracer: on an H200 (56115ca), with it, the traced steps took
        # 47-52 ms by the host's clock with the device idle for 4.7-8.4 ms of each, where
        # an untraced call of the step takes 27 ms on the host (`dispatch_ms`). XLA's own
        # host events (launches, CUDA-graph updates) stay.
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
    hlo = parse_hlo(hlo_text)
    device = device_op_times(out / "trace.xplane.pb", hlo=hlo)
    summary = {"bench": "profile", "device": jax.devices()[0].device_kind,
               "jax": jax.__version__, **setting, "compile_s": round(setup.compile_s, 1),
               "steps": steps, "timeline": device.source,
               **summarize(device.ops, hlo, steps, wall, top,
                           busy_ns=device.busy_ns, span_ns=device.span_ns)}
    (out / "profile.json").write_text(json.dumps(summary, indent=1))
    (out / "profile.txt").write_text(format_tables(summary) + "\n")
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
    hlo = parse_hlo(_saved(folder, "step.hlo.txt").read_text())
    device = device_op_times(_saved(folder, "trace.xplane.pb"), hlo=hlo)
    fresh = summarize(device.ops, hlo, steps, old["step_ms"] * steps / 1e3, top,
                      busy_ns=device.busy_ns, span_ns=device.span_ns)
    summary = {**{k: v for k, v in old.items() if k not in fresh}, "timeline": device.source,
               **fresh}
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(summary, indent=1))
    (out / "profile.txt").write_text(format_tables(summary) + "\n")
    return summary


def main(argv=None) -> int:
    from atjax import config as config_lib
    from atjax.bench import train_step as bench

    argv = sys.argv[1:] if argv is None else argv
    spec, overrides, rest = config_lib.split_config_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m atjax.bench profile",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default="mlp", choices=("mlp", "transformer"))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    bench.add_common_args(parser)
    parser.add_argument("--steps", type=int, default=5, help="steps traced")
    parser.add_argument("--top", type=int, default=25, help="heaviest ops listed")
    parser.add_argument("--out", default=None,
                        help="folder for profile.json, profile.txt, step.hlo.txt.gz and "
                             "the trace (default: a temporary folder); with --reread, the "
                             "folder for the new profile.json and profile.txt (default: "
                             "the re-read folder)")
    parser.add_argument("--reread", default=None, metavar="DIR",
                        help="attribute a saved profile (a --out folder, or the "
                             "output of launch/gpu_bench.sh) again and rewrite its "
                             "profile.json and profile.txt (in --out if given); builds and "
                             "runs nothing")
    args = parser.parse_args(rest)
    if args.reread:
        summary = reread(args.reread, args.top, args.out)
        print(json.dumps(summary), flush=True)
        print(format_tables(summary), flush=True)
        return 0
    config = config_lib.load(spec or "configs/paper.py", overrides)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="atjax-profile-"))
    print(f"[profile {args.head}/{args.dtype}] building and compiling the step",
          file=sys.stderr, flush=True)
    setup = bench.prepare(config, args.head, args.dtype, args.batch_size, args.text_length)
    print(f"[profile {args.head}/{args.dtype}] compiled in {setup.compile_s:.1f} s; tracing "
          f"{args.steps} steps after {args.warmup} warm-up steps", file=sys.stderr, flush=True)
    setup.run(args.warmup)
    setting = {"head": args.head, "dtype": args.dtype, "batch_size": args.batch_size,
               "overrides": overrides}
    summary = capture(setup, args.steps, out, setting=setting, top=args.top)
    print(json.dumps(summary), flush=True)
    print(format_tables(summary), flush=True)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
