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
