"""`python -m atjax.bench {train_step,profile,aot,attention,dropout_kernel,layer_kernel,host_gc,search} ...`:
benchmarks that print JSON lines.

train_step: the real training step on synthetic batches (atjax.bench.train_step).
profile:    where a training step's device time goes, by op category and model part
            (atjax.bench.profile).
aot:        what the training step compiles to for an H100 or H200 that is not attached:
            memory, kernels, traffic, copies and transposes (atjax.bench.aot).
attention:  the text encoder's attention core on the attached device, the Pallas kernel
            checked against the einsums and both timed (atjax.bench.attention).
dropout_kernel: what one dropout compiles to for an H100 or H200: kernels, and the hashing
            per element in the PTX (atjax.bench.dropout_kernel).
layer_kernel: what one layer (the taps stem, the text encoder's GELU) compiles to for an
            H100 or H200: kernels, and the instructions per element in the PTX
            (atjax.bench.layer_kernel).
host_gc:    how long Python's garbage collector stops a training process's host, with and
            without the heap frozen (atjax.bench.host_gc).
search:     exact / approximate search latency over generated embeddings (atjax.bench.search).
"""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("train_step", "profile", "aot", "attention", "dropout_kernel",
                                   "layer_kernel", "host_gc", "search"):
        print(__doc__)
        return 2
    if argv[0] == "train_step":
        from atjax.bench import train_step as bench
    elif argv[0] == "profile":
        from atjax.bench import profile as bench
    elif argv[0] == "aot":
        from atjax.bench import aot as bench
    elif argv[0] == "attention":
        from atjax.bench import attention as bench
    elif argv[0] == "dropout_kernel":
        from atjax.bench import dropout_kernel as bench
    elif argv[0] == "layer_kernel":
        from atjax.bench import layer_kernel as bench
    elif argv[0] == "host_gc":
        from atjax.bench import host_gc as bench
    else:
        from atjax.bench import search as bench
    return bench.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
