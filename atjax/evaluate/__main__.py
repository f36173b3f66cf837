"""python -m atjax.evaluate TASK --model MODEL [--data_dir DIR] --out OUT [--config.x=v ...]

TASK is one of retrieval, zeroshot, sed, probes (see atjax.evaluate). MODEL is an export
bundle or a training workdir (loaded with atjax.load). DIR holds the prepared datasets
(python -m data_pipeline.prepare); the probes of a model trained on the built-in synthetic
corpus need none. Task settings are overridden with --config.<setting>=<value>, e.g.
  python -m atjax.evaluate zeroshot --model runs/x --data_dir /data/tfds --out out/zs \\
      --config.prompt="A recording of {label}."
OUT/results.json gets the metrics and the settings; a table is printed.
`python -m atjax.evaluate TASK --settings` lists a task's settings and their defaults.
"""

from __future__ import annotations

import argparse
import sys

from atjax import console


def main(argv=None) -> int:
    from atjax import config as config_lib
    from atjax import evaluate
    from atjax.evaluate import data as data_lib
    from atjax.evaluate import results as results_lib

    argv = sys.argv[1:] if argv is None else list(argv)
    spec, overrides, rest = config_lib.split_config_argv(argv)
    parser = argparse.ArgumentParser(prog="python -m atjax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(evaluate.TASKS))
    parser.add_argument("--model", help="export bundle or training workdir")
    parser.add_argument("--data_dir", default="", help="prepared TFDS data folder")
    parser.add_argument("--out", help="folder for results.json")
    parser.add_argument("--settings", action="store_true",
                        help="print the task's settings and exit")
    console.add_verbose_flag(parser)
    args = parser.parse_args(rest)
    if spec is not None:
        parser.error("tasks take no --config file; set single fields with --config.<name>=v")
    try:
        config = evaluate.task_config(args.task, overrides=overrides)
    except ValueError as e:
        parser.error(str(e))
    if args.settings:
        print(config)
        return 0
    if not args.model or not args.out:
        parser.error("--model and --out are required")
    console.setup(args.verbose)

    import atjax

    try:
        embedder = atjax.load(args.model)
        rec = evaluate.evaluate(args.task, embedder, model=args.model, out=args.out,
                                data_dir=args.data_dir, overrides=overrides)
    except (FileNotFoundError, data_lib.TaskInputError, config_lib.ConfigError) as e:
        # No model there, a dataset that is not prepared, or settings or data that the
        # task cannot run on: one line naming it, exit 2.
        parser.error(" ".join(str(e).split()))
    print(f"{args.task}: {args.model}")
    print(results_lib.table(results_lib.metrics_of(rec)))
    print(f"wrote {args.out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
