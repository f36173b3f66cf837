"""`python -m atjax.bench dropout_kernel [--target h200|h100] [--shape 64,500,32,64]
[--dtype bfloat16] [--rate 0.2] [--out FILE]`

What one dropout compiles to on a GPU that is not attached (`python -m atjax.bench aot`'s
targets; needs JAX's CUDA plugin, see the README's Install). For each mask mode of
`atjax.kernels.dropout.Dropout` (32 bits: nnx.Dropout; 16 bits: one threefry hash per four
sites), it compiles the layer applied to an array of `--shape` with XLA's dump on, and
prints one JSON line: the kernels the module launches and their traffic, and, read from
the PTX of the kernel that writes the result, its `xor.b32` instructions per thread, the
elements each thread stores, and so the xor instructions per element. Threefry-2x32 is 20
rounds of add, rotate and xor, so that last figure counts hashes per element: about 21 for
one hash per element (the 32-bit draw XORs the two words), about 5 for one per four.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from atjax.bench import emit
from atjax.bench.ptx import compile_with_ptx, kernel_stats, root_kernel, start_dump


def run(target: str, shape: tuple[int, ...], dtype: str, rate: float, dump: pathlib.Path
        ) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from atjax.kernels import dropout as dropout_lib
    from atjax.bench import aot

    device = aot.target_devices(target, 1)[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)
    seed = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding)
    results = []
    for bits in dropout_lib.MASK_BITS[::-1]:  # 32 (nnx.Dropout) first
        def apply(x, seed, bits=bits):
            layer = dropout_lib.Dropout(rate, mask_bits=bits, rngs=nnx.Rngs(0))
            return layer(x, rngs=jax.random.wrap_key_data(seed))

        text, code = compile_with_ptx(apply, (x, seed), f"dropout{bits}", dump)
        kernel = root_kernel(text)
        stats = kernel_stats(code, kernel, jnp.dtype(dtype).itemsize * 8)
        summary = aot.module_summary(text)
        results.append({"bench": "dropout_kernel", "target": target, "jax": jax.__version__,
                        "mask_bits": bits, "shape": list(shape), "dtype": dtype,
                        "rate": rate, "kernels": summary["kernels"],
                        "traffic_gb": summary["traffic_gb"], "output_kernel": kernel,
                        **stats})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.bench dropout_kernel",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("h200", "h100"), default="h200")
    parser.add_argument("--shape", default="64,500,32,64",
                        help="the array dropped out (default: after ResNet38's stage 1)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--out", default=None, help="also append the JSON lines here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        shape = tuple(int(d) for d in args.shape.split(","))
    except ValueError:
        parser.error(f"--shape takes comma-separated sizes, got {args.shape!r}")
    dump = start_dump("atjax-dropout-ptx-")
    for result in run(args.target, shape, args.dtype, args.rate, dump):
        emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
