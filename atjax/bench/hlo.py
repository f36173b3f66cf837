"""What each op of a compiled train step is, read from the step's HLO text.

`parse_hlo` reads a module (`compiled.as_text()`) into its instructions. For each one this
module tells its category (convolution, matmul, pallas, fft, rng, reduction, layout copy,
collective, elementwise), the part of the model and the direction it belongs to (from the
name scopes that atjax.model, atjax.encoders and atjax.train_step open), the memory
traffic its operands and result imply, and the arithmetic of a convolution or matmul.
`atjax.bench.trace` matches a trace's kernels to these instructions.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

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
# Ops that run other computations: their bodies' ops are timed themselves.
CONTROL_FLOW = {"while", "conditional", "call", "async-start", "async-done"}


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
    # Pallas kernels (`atjax.kernels.attention`) by the name their kernels carry in a trace: the
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


def kernel_category(kernel: str) -> str:
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
