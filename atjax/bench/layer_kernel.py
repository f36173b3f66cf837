"""`python -m atjax.bench layer_kernel --layer taps|gelu|attention [--target h200|h100]
[--shape ...] [--out FILE]`

What one layer of the step compiles to on a GPU that is not attached (`python -m
atjax.bench aot`'s targets; needs JAX's CUDA plugin, see the README's Install): its
forward pass and its backward pass, as the model takes them, each compiled with XLA's dump
on. One JSON line per pass and form: the kernels the module launches, their traffic, and
for each kernel with PTX (XLA's own fusions, Triton matmuls) the instructions a thread
runs, its local-memory loads and stores, its tensor-core instructions and the elements
it stores (`atjax.bench.ptx`). Where a ptxas is found (`atjax.bench.ptx.find_ptxas`:
$PTXAS, PATH, or the `nvidia-cuda-nvcc-cu12` wheel), also each kernel's registers per
thread and the bytes the register allocator spilled, which PTX (virtual registers) does
not show.

Why instructions: a few elementwise kernels of the step are bound by their instructions,
not by memory: they move their bytes well below the card's bandwidth, and at ~60
instructions per element a few hundred million elements take a noticeable part of a step.
Fewer instructions per element is then what speeds such a kernel (docs/kernels.md keeps
the measurements).

Layers:
  - taps: `atjax.kernels.tap_conv` (the `tap_conv` kernel), a one-channel image of
    --shape (batch, frames, mel bins; default 64,1001,64) to 64 channels; the backward
    gives the input's gradient (it feeds BatchNorm bn0) and the kernel's.
  - gelu: the text encoder's bias add and exact GELU after its 4,096-wide matmul, in
    bfloat16, on --shape (default 64,32,4096), rematerialised in the backward as
    the `remat_activation` kernel does; both forms: `jax.nn.gelu` and `atjax.kernels.gelu`.
  - attention: the text encoder's attention core (`atjax.kernels.attention`) on --shape (batch,
    tokens, heads, head dim; default 64,32,16,64), bfloat16, with the attention dropout's
    mask; both forms: the einsums ("xla") and the Pallas kernel ("pallas").
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from atjax.bench import emit

DEFAULT_SHAPES = {"taps": "64,1001,64", "gelu": "64,32,4096", "attention": "64,32,16,64"}


def _layer_passes(layer: str, shape: tuple[int, ...], sharding):
    """[(form, pass, function, abstract arguments)] for `layer`."""
    import jax
    import jax.numpy as jnp

    def spec(s, dtype):
        return jax.ShapeDtypeStruct(s, jnp.dtype(dtype), sharding=sharding)

    if layer == "taps":
        from atjax.kernels import tap_conv

        channels = 64
        x, kernel = spec((*shape, 1), jnp.float32), spec((3, 3, 1, channels), jnp.bfloat16)
        g = spec((*shape, channels), jnp.bfloat16)

        def forward(x, kernel):
            return tap_conv.tap_conv(x, kernel, jnp.bfloat16)

        def backward(x, kernel, g):
            return jax.vjp(forward, x, kernel)[1](g)

        return [("tap_conv", "forward", forward, (x, kernel)),
                ("tap_conv", "backward", backward, (x, kernel, g))]

    if layer == "attention":
        from atjax.kernels import attention as attention_lib

        batch, tokens, heads, head_dim = shape
        qkv = spec((batch, tokens, 3 * heads, head_dim), jnp.bfloat16)
        key_bias, keep = spec((batch, tokens), jnp.float32), spec(
            (batch, heads, tokens, tokens), jnp.bool_)
        g = spec((batch, tokens, heads, head_dim), jnp.bfloat16)
        passes = []
        for impl in ("xla", "pallas"):
            def forward(qkv, key_bias, keep, impl=impl):
                return attention_lib.attention(qkv, key_bias, keep, num_heads=heads,
                                               keep_prob=0.9, impl=impl)

            def backward(qkv, key_bias, keep, g, forward=forward):
                return jax.vjp(lambda x: forward(x, key_bias, keep), qkv)[1](g)

            passes += [(impl, "forward", forward, (qkv, key_bias, keep)),
                       (impl, "backward", backward, (qkv, key_bias, keep, g))]
        return passes

    from atjax.kernels import gelu as gelu_lib
    from atjax.encoders import bert

    y, bias = spec(shape, jnp.bfloat16), spec(shape[-1:], jnp.float32)
    passes = []
    for form, act in (("jax.nn.gelu", lambda v: jax.nn.gelu(v, approximate=False)),
                      ("atjax.kernels.gelu", gelu_lib.gelu)):
        def forward(y, bias, act=act):
            return jax.checkpoint(lambda y, b: act(bert.add_bias(y, b)))(y, bias)

        def backward(y, bias, g, forward=forward):
            return jax.vjp(forward, y, bias)[1](g)

        passes += [(form, "forward", forward, (y, bias)),
                   (form, "backward", backward, (y, bias, y))]
    return passes


def run(layer: str, target: str, shape: tuple[int, ...], dump: pathlib.Path) -> list[dict]:
    import jax

    from atjax.bench import aot, ptx

    device = aot.target_devices(target, 1)[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    ptxas = ptx.find_ptxas()
    results = []
    for i, (form, name, fn, args) in enumerate(_layer_passes(layer, shape, sharding)):
        with aot.target_context([device]):  # Pallas's lowering reads the target's GPU
            text, code = ptx.compile_with_ptx(fn, args, f"{layer}{i}_{name}", dump)
        entries = ptx.entries(code)
        summary = aot.module_summary(text)
        root = ptx.root_kernel(text)
        assembled = ptx.assemble(code, ptxas) if ptxas else {}
        kernels = []
        for entry, body in entries.items():
            # Elements in bfloat16, the layer's output dtype: a float32 store counts twice.
            stats = ptx.kernel_stats(body, entry, 16)
            kernels.append({"kernel": entry, **{k: v for k, v in stats.items()
                                                if not k.startswith("xor")},
                            **assembled.get(entry, {})})
        results.append({"bench": "layer_kernel", "layer": layer, "form": form, "pass": name,
                        "target": target, "jax": jax.__version__, "shape": list(shape),
                        "kernels": summary["kernels"], "traffic_gb": summary["traffic_gb"],
                        # A backward's result is a tuple of several kernels' outputs.
                        "output_kernel": root if root in entries else None,
                        "ptx_kernels": kernels})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.bench layer_kernel",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", choices=tuple(DEFAULT_SHAPES), required=True)
    parser.add_argument("--target", choices=("h200", "h100"), default="h200")
    parser.add_argument("--shape", default=None,
                        help="taps: batch, frames, mel bins; gelu: batch, tokens, features; "
                        "attention: batch, tokens, heads, head dim")
    parser.add_argument("--out", default=None, help="also append the JSON lines here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    text = args.shape or DEFAULT_SHAPES[args.layer]
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        parser.error(f"--shape takes comma-separated sizes, got {text!r}")
    sizes = len(DEFAULT_SHAPES[args.layer].split(","))
    if len(shape) != sizes:
        parser.error(f"--shape takes {sizes} sizes for {args.layer}, got {text!r}")
    from atjax.bench import ptx

    for result in run(args.layer, args.target, shape, ptx.start_dump("atjax-layer-ptx-")):
        emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
