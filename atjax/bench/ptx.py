"""Reading the PTX that XLA writes for a module compiled for a GPU that is not attached
(`python -m atjax.bench aot`'s targets, with `--xla_dump_to`): which kernel writes the
module's result, and per kernel the instructions each thread runs and the elements it
stores. XLA's elementwise (loop) kernels have no branches back, so their static count of
instructions is what a thread executes; a kernel with a loop in it (a reduction, a
library-style matmul) runs its loop body more than once, and the count is a lower bound.
"""

from __future__ import annotations

import re

_STORE = re.compile(r"\bst\.global(?:\.[a-z]+)*?(?:\.v(\d))?\.[bfsu](\d+)\s")
_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(.*?\n\}\n", re.S)
# An instruction line: optional predicate guard, an opcode, operands, `;`. Directives
# (`.reg`), labels (`$L__BB0_2:`), braces and comments are not instructions.
_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][a-z0-9_]*)(?:\.[\w:]+)*\b[^;]*;\s*$",
                          re.MULTILINE)


def entries(ptx: str) -> dict[str, str]:
    """Each kernel's PTX, by entry name."""
    return {m.group(1): m.group(0) for m in _ENTRY.finditer(ptx)}


def root_kernel(hlo_text: str) -> str:
    """The name of the kernel that writes the entry computation's result, as the PTX
    spells it (`loop_select_fusion.2` -> `loop_select_fusion_2`)."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    m = re.search(r"^\s*ROOT %?([\w.\-]+) = ", entry, re.MULTILINE)
    if m is None:
        raise ValueError("the entry computation has no ROOT instruction")
    return m.group(1).replace(".", "_").replace("-", "_")


def kernel_stats(ptx: str, kernel: str, element_bits: int) -> dict:
    """Per thread of the PTX entry `kernel`: instructions, `xor.b32` instructions (threefry's
    rounds), local-memory loads and stores (registers spilled, or arrays the compiler could
    not keep in registers), tensor-core instructions (`mma`, `wgmma`) and elements of
    `element_bits` stored, and the first two counts per element stored."""
    bodies = entries(ptx)
    if kernel not in bodies:
        raise ValueError(f"no PTX entry {kernel!r} (entries: {sorted(bodies)})")
    body = bodies[kernel]
    instructions = len(_INSTRUCTION.findall(body))
    xors = len(re.findall(r"\bxor\.b32\b", body))
    local = len(re.findall(r"^\s*(?:@!?%\w+\s+)?(?:ld|st)\.local\b", body, re.MULTILINE))
    mma = len(re.findall(r"^\s*(?:@!?%\w+\s+)?w?gmma\b|^\s*(?:@!?%\w+\s+)?mma\.",
                         body, re.MULTILINE))
    stored_bits = sum(int(v or 1) * int(bits) for v, bits in _STORE.findall(body))
    elements = stored_bits // element_bits

    def per_element(n):
        return round(n / elements, 2) if elements else None

    return {"instructions_per_thread": instructions, "xor_per_thread": xors,
            "local_per_thread": local, "mma_per_thread": mma, "elements_per_thread": elements,
            "instructions_per_element": per_element(instructions),
            "xor_per_element": per_element(xors)}


def start_dump(prefix: str):
    """A fresh folder that XLA dumps every module it compiles into (its PTX among them),
    for compile-only GPU devices: JAX is kept from starting the CUDA plugin as a backend,
    which fails without a driver (see atjax.bench.aot). Call before JAX compiles anything."""
    import os
    import pathlib
    import tempfile

    dump = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    # jax 0.10's XLA writes each module's PTX with --xla_dump_to alone; jax 0.11's (the GPU
    # image's) writes it only for the kernel emitters that --xla_dump_emitter_re matches,
    # in several files per module.
    flags = f"--xla_dump_to={dump} --xla_dump_emitter_re=.*"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    import jax

    jax.config.update("jax_platforms", "cpu")
    return dump


def compile_with_ptx(fn, args, label: str, dump) -> tuple[str, str]:
    """(compiled HLO text, PTX) of `fn` jitted on `args`; `label` names the function, and
    so its files in the `start_dump` folder `dump`."""
    import jax

    fn.__name__ = label
    text = jax.jit(fn).lower(*args).compile().as_text()
    files = sorted(dump.glob(f"*jit_{label}*.ptx"))
    if not files:
        raise RuntimeError(f"XLA wrote no PTX for {label} under {dump}")
    return text, "\n".join(p.read_text() for p in files)


def find_ptxas() -> str | None:
    """A ptxas to assemble PTX with: $PTXAS, else one on PATH, else the one in the
    `nvidia-cuda-nvcc-cu12` wheel if installed (`pip install --no-deps
    nvidia-cuda-nvcc-cu12`; it must be as new as the PTX's `.version`)."""
    import os
    import pathlib
    import shutil

    if os.environ.get("PTXAS"):
        return os.environ["PTXAS"]
    if (found := shutil.which("ptxas")) is not None:
        return found
    try:
        import nvidia.cuda_nvcc as nvcc  # the wheel's namespace package
    except ImportError:
        return None
    for root in getattr(nvcc, "__path__", []):
        candidate = pathlib.Path(root) / "bin" / "ptxas"
        if candidate.is_file():
            return str(candidate)
    return None


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")


def parse_ptxas_info(text: str) -> dict[str, dict]:
    """Per entry of `ptxas -v`'s report: registers per thread, stack frame and spilled
    bytes (what the register allocator could not keep in registers; PTX shows none of it,
    as its registers are virtual)."""
    out: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if (m := _PTXAS_ENTRY.search(line)) is not None:
            current = out.setdefault(m.group(1), {})
        elif current is not None and (m := _PTXAS_FRAME.search(line)) is not None:
            current.update(stack_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)),
                           spill_load_bytes=int(m.group(3)))
        elif current is not None and (m := _PTXAS_REGISTERS.search(line)) is not None:
            current["registers"] = int(m.group(1))
    return out


def assemble(ptx: str, ptxas: str) -> dict[str, dict]:
    """`parse_ptxas_info` of `ptxas -v` on each module of `ptx` (text that may join
    several modules, each with its own `.version` and `.target`)."""
    import subprocess
    import tempfile

    modules = re.split(r"(?m)^(?=\.version )", ptx)
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, module in enumerate(m for m in modules if ".entry" in m):
            target = re.search(r"^\.target\s+(\w+)", module, re.MULTILINE)
            path = f"{tmp}/m{i}.ptx"
            with open(path, "w") as f:
                f.write(module)
            r = subprocess.run([ptxas, "-v", f"-arch={target.group(1) if target else 'sm_90a'}",
                                path, "-o", f"{tmp}/m{i}.cubin"], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"ptxas failed: {r.stderr.strip()[-500:]}")
            info.update(parse_ptxas_info(r.stderr + r.stdout))
    return info
