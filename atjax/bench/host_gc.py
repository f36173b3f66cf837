"""`python -m atjax.bench host_gc --config configs/paper.py[:arg] [--steps N] [--out FILE]`

How long Python's garbage collector stops the host of a training process, and what
`atjax.host_gc.freeze()` (which the trainer and the step benchmark call) leaves of it.

It imports what a training process imports (transformers for the tokenizer, the
TensorFlow input pipeline where it is installed), builds the config's model and float32
train state with random weights, and prints one JSON line:
  - the objects the collector tracks, and a full collection's host time (median of 3);
  - the collector's runs (all, full ones, host ms) over `--steps` calls of a jitted step
    that donates the train state and returns it unchanged: no arithmetic, but each call
    returns a new jax.Array for every leaf in rebuilt dicts, the same objects a training
    step returns. First with the heap as it is, then frozen.
The heap and the churn are the trainer's; the model compute is left out (it does not touch
Python objects), so this runs on any machine in about a minute for the paper's model.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

from atjax.bench import emit


def _full_collection_ms(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 2)


def run(config, steps: int) -> dict:
    import jax

    import transformers  # noqa: F401  (the trainer's tokenizer)

    try:  # a training process holds the input pipeline's modules too
        from data_pipeline import pipeline  # noqa: F401  (imports TensorFlow)
        tensorflow = True
    except ImportError:
        tensorflow = False
    from atjax import host_gc
    from atjax import model as model_lib
    from atjax import trainer  # noqa: F401  (the trainer's own imports)
    from atjax import train_step as step_lib

    model = model_lib.build(config.model, seed=0)
    _, _, params, batch_stats, _ = step_lib.split_model(model)
    del model
    tx = step_lib.make_optimizer(config, params)
    state = step_lib.init_state(params, batch_stats, tx, None)
    leaves = len(jax.tree.leaves(state))
    # The trainer's step donates its state and returns the next one: here, the same values.
    step = jax.jit(lambda s: jax.tree.map(lambda x: x, s), donate_argnums=0)
    state = step(state)  # compiled outside the counted calls
    jax.block_until_ready(state)

    def churn() -> dict:
        nonlocal state
        with host_gc.Pauses() as pauses:
            start = time.perf_counter()
            for _ in range(steps):
                state = step(state)
            jax.block_until_ready(state)
            seconds = time.perf_counter() - start
            counts = pauses.take()
        return {**counts, "ms_per_call": round(seconds / steps * 1e3, 3)}

    result = {"bench": "host_gc", "python": sys.version.split()[0], "jax": jax.__version__,
              "tensorflow_imported": tensorflow, "state_leaves": leaves, "steps": steps}
    result["tracked_objects"] = len(gc.get_objects())
    result["full_collection_ms"] = _full_collection_ms()
    result["unfrozen"] = churn()
    result["frozen_objects"] = host_gc.freeze()
    result["full_collection_ms_frozen"] = _full_collection_ms()
    result["frozen"] = churn()
    host_gc.thaw()
    return result


def main(argv=None) -> int:
    from atjax import config as config_lib

    argv = sys.argv[1:] if argv is None else argv
    spec, overrides, rest = config_lib.split_config_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m atjax.bench host_gc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300,
                        help="calls of the state-returning step, with and without the freeze")
    parser.add_argument("--out", default=None, help="also append the JSON line here")
    args = parser.parse_args(rest)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    config = config_lib.load(spec or "configs/paper.py", overrides)
    emit(run(config, args.steps), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
