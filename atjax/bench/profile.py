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
outputs imply, in GB/s of its device time: a kernel far below the card's memory bandwidth
is a candidate for another layout, fusion or algorithm. Matmuls and convolutions also
show TFLOP/s, their arithmetic read from the HLO shapes (cuDNN's forward and backward
calls all count the forward convolution's multiply-adds, without those on padding). The
same two rates are summed by model part.

It prints one JSON line (per-step milliseconds by category and by part, the heaviest ops,
the kernels shorter than 2, 5 and 10 us, and the time the device sat idle within a step)
followed by readable tables, and writes both, the compiled HLO and the raw trace
(`*.xplane.pb`, for TensorBoard or Perfetto) to --out. The trace needs no TensorBoard:
`jax.profiler.ProfileData` reads it. --reread attributes a saved profile folder again.

The parts: atjax.bench.hlo reads the compiled step, atjax.bench.trace the trace,
atjax.bench.attribution attributes and tabulates, atjax.bench.capture traces and saves.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

from atjax.bench import attribution
from atjax.bench import capture as capture_lib


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
        summary = capture_lib.reread(args.reread, args.top, args.out)
        print(json.dumps(summary), flush=True)
        print(attribution.format_tables(summary), flush=True)
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
    summary = capture_lib.capture(setup, args.steps, out, setting=setting, top=args.top)
    print(json.dumps(summary), flush=True)
    print(attribution.format_tables(summary), flush=True)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
