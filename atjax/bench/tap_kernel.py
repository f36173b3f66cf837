"""`python -m atjax.bench tap_kernel [--target h200|h100] [--shape 64,1001,64]
[--channels 64] [--dtype bfloat16] [--out FILE]`

What ResNet38's first convolution compiles to, as `atjax.tap_conv` computes it
(`model.audio.stem_conv=taps`), on a GPU that is not attached (`python -m atjax.bench
aot`'s targets; needs JAX's CUDA plugin, see the README's Install). It compiles the
forward pass, and the backward pass as the model takes it (gradients for the input, which
feeds BatchNorm bn0's parameters, and for the kernel), for a one-channel image of
`--shape` (B, frames, mel bins) and a 3 x 3 kernel to `--channels`, with XLA's dump on, and
prints one JSON line per pass: the kernels the module launches, their traffic, and for
each kernel with PTX (XLA's own fusions, Triton matmuls) the instructions a thread runs and
the elements it stores (`atjax.bench.ptx`).

Why instructions: on an H200 the forward kernel wrote its 0.52 GB of bfloat16 at 0.97 TB/s
(0.556 ms of a 43 ms step, taps + weight copies, 56115ca profile), where plain elementwise
kernels move 3-4 TB/s. At about 60 instructions per element stored, 262 million elements
are 16 G thread-instructions, ~0.47 ms at the card's ~34 T per second: the kernel is bound
by its instructions, not by memory, so fewer instructions per element is what speeds it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

from atjax.bench import emit


def run(target: str, shape: tuple[int, int, int], channels: int, dtype: str,
        dump: pathlib.Path) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from atjax import tap_conv
    from atjax.bench import aot, ptx

    device = aot.target_devices(target, 1)[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((*shape, 1), jnp.float32, sharding=sharding)
    kernel = jax.ShapeDtypeStruct((3, 3, 1, channels), jnp.dtype(dtype), sharding=sharding)
    g = jax.ShapeDtypeStruct((*shape, channels), jnp.dtype(dtype), sharding=sharding)

    def forward(x, kernel):
        return tap_conv.tap_conv(x, kernel, jnp.dtype(dtype))

    def backward(x, kernel, g):
        return jax.vjp(forward, x, kernel)[1](g)

    results = []
    for name, fn, args in (("tap_forward", forward, (x, kernel)),
                           ("tap_backward", backward, (x, kernel, g))):
        fn.__name__ = name
        text = jax.jit(fn).lower(*args).compile().as_text()
        ptx_files = sorted(dump.glob(f"*jit_{name}*.ptx"))
        if not ptx_files:
            raise RuntimeError(f"XLA wrote no PTX for {name} under {dump}")
        code = "\n".join(p.read_text() for p in ptx_files)
        summary = aot.module_summary(text)
        kernels = []
        code_entries = ptx.entries(code)
        root = ptx.root_kernel(text)
        for entry, body in code_entries.items():
            # Elements counted in the output's dtype: bfloat16 stores of the forward's
            # result; a float32 store counts as two.
            stats = ptx.kernel_stats(body, entry, jnp.dtype(dtype).itemsize * 8)
            kernels.append({"kernel": entry, **{k: v for k, v in stats.items()
                                                if not k.startswith("xor")}})
        results.append({"bench": "tap_kernel", "target": target, "jax": jax.__version__,
                        "pass": name.split("_")[1], "shape": list(shape),
                        "channels": channels, "dtype": dtype,
                        "kernels": summary["kernels"], "traffic_gb": summary["traffic_gb"],
                        # The backward's result is a tuple of two kernels' outputs.
                        "output_kernel": root if root in code_entries else None,
                        "ptx_kernels": kernels})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.bench tap_kernel",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("h200", "h100"), default="h200")
    parser.add_argument("--shape", default="64,1001,64",
                        help="batch, frames, mel bins of the one-channel image")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default=None, help="also append the JSON lines here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        shape = tuple(int(d) for d in args.shape.split(","))
    except ValueError:
        parser.error(f"--shape takes comma-separated sizes, got {args.shape!r}")
    if len(shape) != 3:
        parser.error(f"--shape takes three sizes (batch, frames, mel bins), got {args.shape!r}")
    dump = pathlib.Path(tempfile.mkdtemp(prefix="atjax-tap-ptx-"))
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()
    import jax

    # Compile-only devices need no CUDA: keep JAX from starting the CUDA plugin (aot.py).
    jax.config.update("jax_platforms", "cpu")
    for result in run(args.target, shape, args.channels, args.dtype, dump):
        emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
