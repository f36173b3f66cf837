"""Runs the real Trainer in a fresh process (so XLA_FLAGS / jax.distributed apply), on the
tiny synthetic config with the in-memory ArrayInput. Used by tests/test_trainer.py.

  python tests/train_worker.py WORKDIR STEPS [--save_params OUT.npz] [--nan_at STEP]
      [--override FIELD=VALUE ...]
"""

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("steps", type=int)
    parser.add_argument("--save_params", default=None)
    parser.add_argument("--nan_at", type=int, default=0)
    parser.add_argument("--checkpoint_every", type=int, default=2)
    parser.add_argument("--step_sleep", type=float, default=0.0)
    parser.add_argument("--head", default="transformer")
    parser.add_argument("--override", action="append", default=[],
                        help="a further config override, e.g. model.compute_dtype=bfloat16")
    args = parser.parse_args()

    import logging
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)

    from atjax import sharding
    sharding.initialize_distributed()

    import time

    import jax
    import numpy as np

    from atjax import config as config_lib
    from atjax import testing
    from atjax import trainer as trainer_lib

    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny,head={args.head}", [
        f"total_steps={args.steps}", f"checkpoint_every_steps={args.checkpoint_every}",
        "log_every_steps=1",
        # Adam's first steps are sign-like (update ~ g/|g|): with the default eps a gradient
        # of 1e-9 and one of -1e-9 (reduction-order noise across device counts) move a
        # weight in opposite directions. A larger eps keeps the comparison about the step.
        "optimizer.eps=1e-3", *args.override])

    import gc
    frozen_while_training = []  # the heap's frozen objects as each batch is drawn

    class Input(testing.ArrayInput):
        def __next__(self):
            frozen_while_training.append(gc.get_freeze_count())
            if args.step_sleep:
                time.sleep(args.step_sleep)
            batch = super().__next__()
            if args.nan_at and self.position == args.nan_at:
                batch["audio"] = np.full_like(batch["audio"], np.nan)
            return batch

    def factory(config, **kw):
        return Input(**kw)

    trainer = trainer_lib.Trainer(config, args.workdir, input_factory=factory, progress=False)
    try:
        result = trainer.train()
    except trainer_lib.NonFiniteLossError as e:
        print(f"NONFINITE: {e}", flush=True)
        return 3
    if args.save_params and jax.process_index() == 0:
        leaves = jax.tree_util.tree_leaves_with_path(trainer.state.params)
        arrays = {jax.tree_util.keystr(p): np.asarray(v.addressable_data(0) if hasattr(v, "addressable_data") else v)
                  for p, v in leaves}
        np.savez(args.save_params, **arrays)
    copies = len(jax.tree.leaves(trainer.state.weight_copies))
    print(f"DONE step={result.step} preempted={result.preempted} copies={copies} "
          f"gc_frozen_while_training={min(frozen_while_training, default=0)} "
          f"gc_frozen={gc.get_freeze_count()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
