"""`python -m atjax.bench attention [--batch_size 64 --tokens 32 --heads 16 --head_dim 64
--dtype bfloat16 --rate 0.1] [--interpret] [--out FILE]`

The text encoder's attention core (`atjax.kernels.attention`) on the attached device, both forms:
the reference einsums ("xla") and the Pallas kernel ("pallas"), forward and backward as
in training (the context and the gradient of the projection's output), at RoBERTa-Large's
sizes by default. It checks the kernel against the reference, then times each, and prints
one JSON line: device, the largest difference of the context and of the gradient, each
relative to the reference's largest magnitude, whether both are within the tolerance of
the dtype (a bfloat16 rounding step or two: 2**-6; float32, TF32 allowed: 3e-3) and the microseconds per
call of each form (median of `--repeats` windows of `--calls` calls, the device
synchronised around each window). The exit status is 1 if the kernel does not match, so
that a wrong kernel is caught before a training step is timed with it.

`--interpret` runs the kernel in Pallas's interpreter (any device; its time means nothing):
how the command is tested on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from atjax.bench import emit

# float32: both forms may take TF32 for their products on a GPU (XLA's default precision,
# and Triton's for a float32 dot), with errors near 1e-3 of the largest value.
TOLERANCE = {"bfloat16": 2**-6, "float16": 2**-8, "float32": 3e-3}


def inputs(batch: int, tokens: int, heads: int, head_dim: int, dtype: str, rate: float,
           seed: int = 0):
    """(qkv, key_bias, keep, cotangent): random activations, captions of random lengths
    (at least one token), a dropout mask at `rate` (None at 0)."""
    import jax
    import jax.numpy as jnp

    k = jax.random.split(jax.random.key(seed), 4)
    qkv = jax.random.normal(k[0], (batch, tokens, 3 * heads, head_dim), dtype)
    lengths = jax.random.randint(k[1], (batch, 1), 1, tokens + 1)
    key_bias = jnp.where(jnp.arange(tokens)[None, :] < lengths, 0.0,
                         jnp.finfo(jnp.float32).min)
    keep = None
    if rate > 0:
        keep = jax.random.bernoulli(k[2], 1.0 - rate, (batch, heads, tokens, tokens))
    cotangent = jax.random.normal(k[3], (batch, tokens, heads, head_dim), dtype)
    return qkv, key_bias, keep, cotangent


def step_fn(impl: str, heads: int, keep_prob: float, interpret: bool):
    """jit of (qkv, key_bias, keep, g) -> (context, d qkv), the training step's use."""
    import jax

    from atjax.kernels import attention as attention_lib

    def f(qkv, key_bias, keep, g):
        out, vjp = jax.vjp(lambda x: attention_lib.attention(
            x, key_bias, keep, num_heads=heads, keep_prob=keep_prob, impl=impl,
            interpret=interpret), qkv)
        return out, vjp(g)[0]

    return jax.jit(f)


def _relative_difference(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def _time_us(fn, args, calls: int, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compiled and warm
    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        windows.append((time.perf_counter() - start) / calls)
    return round(statistics.median(windows) * 1e6, 2)


def run(args) -> dict:
    import jax

    from atjax.kernels import attention as attention_lib

    keep_prob = 1.0 - args.rate
    data = inputs(args.batch_size, args.tokens, args.heads, args.head_dim, args.dtype,
                  args.rate)
    reference = step_fn("xla", args.heads, keep_prob, False)
    kernel = step_fn("pallas", args.heads, keep_prob, args.interpret)
    ref_out, ref_grad = reference(*data)
    out, grad = kernel(*data)
    context_diff = _relative_difference(out, ref_out)
    grad_diff = _relative_difference(grad, ref_grad)
    tolerance = TOLERANCE[args.dtype]
    result = {"bench": "attention", "device": jax.devices()[0].device_kind,
              "jax": jax.__version__, "batch_size": args.batch_size, "tokens": args.tokens,
              "heads": args.heads, "head_dim": args.head_dim, "dtype": args.dtype,
              "rate": args.rate, "interpret": args.interpret,
              "forward_warps": attention_lib._FORWARD_WARPS,
              "backward_warps": attention_lib._BACKWARD_WARPS,
              "context_diff": context_diff, "grad_diff": grad_diff, "tolerance": tolerance,
              "match": context_diff <= tolerance and grad_diff <= tolerance}
    result["xla_us"] = _time_us(reference, data, args.calls, args.repeats)
    result["pallas_us"] = _time_us(kernel, data, args.calls, args.repeats)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m atjax.bench attention",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(TOLERANCE), default="bfloat16")
    parser.add_argument("--rate", type=float, default=0.1,
                        help="attention dropout rate (RoBERTa's 0.1; 0: no mask)")
    parser.add_argument("--calls", type=int, default=50, help="calls per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows")
    parser.add_argument("--interpret", action="store_true",
                        help="run the kernel in Pallas's interpreter (any device)")
    parser.add_argument("--out", default=None, help="also append the JSON line here")
    args = parser.parse_args(argv)
    if not 0.0 <= args.rate < 1.0:
        parser.error("--rate must be in [0, 1)")
    if min(args.calls, args.repeats, args.batch_size) < 1:
        parser.error("--calls, --repeats and --batch_size must be >= 1")
    import jax

    if not args.interpret and jax.default_backend() != "gpu":
        print(f"the attention kernel runs on CUDA GPUs, not on {jax.default_backend()}: "
              "--interpret runs it in Pallas's interpreter", file=sys.stderr)
        return 2
    result = run(args)
    emit(result, args.out)
    if not result["match"]:
        print(f"the attention kernel differs from the reference: context {result['context_diff']:.3g}, "
              f"gradient {result['grad_diff']:.3g} (tolerance {result['tolerance']:.3g})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
