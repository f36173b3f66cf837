"""`python -m atjax.train --config configs/X.py[:arg] --workdir DIR [--config.field=value ...]`

Trains the dual encoder described by the config. Re-running with the same workdir resumes
from its latest checkpoint. The loop lives in `atjax.trainer`.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    from atjax import config as config_lib

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m atjax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # Shown by --help; config_lib.split_config_argv takes --config and --config.FIELD first.
    parser.add_argument("--config", metavar="FILE[:ARG]", required=False,
                        help="the experiment's config file, e.g. configs/paper.py:table5-transformer-acba "
                             "(required); --config.FIELD=VALUE overrides a field")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    try:
        spec, overrides, rest = config_lib.split_config_argv(argv)
    except config_lib.ConfigError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    from atjax import trainer as trainer_lib
    try:
        trainer_lib.check_workdir(args.workdir)
        config = config_lib.load(spec, overrides)
        config_lib.check_train_config(config)
    except (config_lib.ConfigError, ValueError) as e:  # ValueError: a config's own argument check
        parser.error(str(e))

    from atjax import sharding
    sharding.initialize_distributed()  # before any other JAX call

    from atjax import evaluators

    trainer = trainer_lib.Trainer(config, args.workdir,
                                  evaluate_fn=evaluators.from_config(config),
                                  progress=not args.no_progress)
    result = trainer.train()
    logging.info("finished at step %d%s%s", result.step,
                 " (stopped early)" if result.stopped_early else "",
                 " (preempted: rerun with the same --workdir to resume)" if result.preempted
                 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
