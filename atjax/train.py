"""`python -m atjax.train --config configs/X.py[:arg] --workdir DIR [--config.field=value ...]`

Trains the dual encoder described by the config. Re-running with the same workdir resumes
from its latest checkpoint; a workdir that another trainer is using is refused (exit code
2), as is a workdir with no intact checkpoint or one of another model; a checkpoint that
cannot be written, or a loss that is not finite, stops training (exit code 1) with the last
good checkpoint kept. The loop lives in `atjax.trainer`.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

from atjax import console

log = logging.getLogger(__name__)


def _check_sources(config) -> None:
    """The `name:split+...` specs of config.data name known datasets and splits, prepared
    at the model's sample rate in data.data_dir, checked before anything is built
    (ConfigError, FileNotFoundError)."""
    from atjax import config as config_lib
    from data_pipeline import datasets

    data = config.data
    rate = int(config.model.audio.frontend.sample_rate)
    fields = ["sources"] + (["acba_sources"] if data.get("acba_fraction", 0) > 0 else [])
    for field in fields:
        value = data.get(field)
        if not isinstance(value, str):
            continue  # datasets handed over in code
        for item in value.split("+"):
            name, sep, split = item.strip().partition(":")
            if not sep or not name or not split:
                raise config_lib.ConfigError(f"data.{field}: {item.strip()!r} is not "
                                             f"'name:split' (in {value!r})")
            if name == "acba":
                continue  # a written ACBA folder
            if name not in datasets.NAMES:
                raise config_lib.ConfigError(f"data.{field}: unknown dataset {name!r}; "
                                             f"known: {', '.join(datasets.NAMES)}")
            base = split.split("[")[0]  # TFDS slicing, e.g. train[:10%]
            if base not in datasets.SPLITS[name]:
                raise config_lib.ConfigError(f"data.{field}: {name} has no split {base!r}; "
                                             f"splits: {', '.join(datasets.SPLITS[name])}")
            # (An empty data_dir is TFDS's default folder, resolved where it is opened; a
            # procedural dataset is generated there on first use.)
            if data.get("data_dir") and name not in datasets.PROCEDURAL and not datasets.builder(
                    name, data.data_dir, rate).is_prepared():
                raise FileNotFoundError(
                    f"data.{field}: {name} at {rate} Hz is not prepared in data.data_dir="
                    f"{data.data_dir}; prepare it with: "
                    f"{datasets.prepare_command(name, data.data_dir, rate)}")


def check_settings(config) -> None:
    """Every setting that can be checked without building anything: the model, the
    optimizer, the input and the evaluations. Raises ValueError (ConfigError where this
    module checks) naming the setting, or FileNotFoundError naming a missing path."""
    from atjax import evaluate
    from atjax import evaluators
    from atjax import model as model_lib
    from atjax import train_step as step_lib
    from data_pipeline import pipeline

    model_lib.check_config(config.model)
    step_lib.make_optimizer(config, {})  # refuses an unknown optimizer.name
    pipeline._check_config(config.data)  # what the training input checks first
    _check_sources(config)
    evaluators.from_config(config)  # refuses an unknown evals.<name>.type
    for name, entry in (config.get("evals") or {}).items():
        settings = {k: v for k, v in dict(entry).items() if k not in ("type", "data_dir")}
        try:
            evaluate.task_config(entry["type"], settings)
        except ValueError as e:
            raise ValueError(f"evals.{name}: {e}") from None


def make_workdir(workdir: str) -> None:
    """Creates the workdir (and its parents), or raises ConfigError naming the path."""
    from atjax import config as config_lib

    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise config_lib.ConfigError(f"workdir {workdir} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise config_lib.ConfigError(f"workdir {workdir} cannot be created: "
                                     f"{e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise config_lib.ConfigError(f"workdir {workdir} is not writable")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def main(argv=None) -> int:
    from atjax import config as config_lib

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m atjax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # Shown by --help; config_lib.split_config_argv takes --config and --config.FIELD first.
    parser.add_argument("--config", metavar="FILE[:ARG]", required=False,
                        help="the experiment's config file, e.g. configs/paper.py:table5-transformer-acba "
                             "(required); --config.FIELD=VALUE overrides a field")
    parser.add_argument("--workdir", required=True,
                        help="the run's folder: checkpoints, metrics.jsonl, TensorBoard, "
                             "config.json; rerunning with the same folder resumes")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    try:
        spec, overrides, rest = config_lib.split_config_argv(argv)
    except config_lib.ConfigError as e:
        parser.error(str(e))
    console.add_verbose_flag(parser)
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config is required")
    console.setup(args.verbose)
    from atjax import checkpoint as ckpt_lib
    from atjax import trainer as trainer_lib
    try:
        ckpt_lib.check_workdir(args.workdir)
        config = config_lib.load(spec, overrides)
        config_lib.check_train_config(config)
        # ValueError: these only check settings (each module's own check of its block).
        check_settings(config)
        make_workdir(args.workdir)
    except (config_lib.ConfigError, ValueError, FileNotFoundError) as e:
        parser.error(_one_line(e))

    from atjax import sharding
    sharding.initialize_distributed()  # before any other JAX call
    try:
        sharding.check_batch_size(config.batch_size, sharding.make_mesh())
    except ValueError as e:
        parser.error(_one_line(e))

    from atjax import evaluators

    try:
        trainer = trainer_lib.Trainer(config, args.workdir,
                                      evaluate_fn=evaluators.from_config(config),
                                      progress=not args.no_progress)
    except trainer_lib.WorkdirBusyError as e:  # another trainer holds the workdir
        parser.error(str(e))
    except (config_lib.ConfigError, FileNotFoundError) as e:
        # A setting checked where it is used, or a file the config names that is missing
        # (an unprepared dataset, pretrained weights).
        parser.error(_one_line(e))

    try:
        result = trainer.train()
    except (ckpt_lib.CheckpointDamagedError, ckpt_lib.CheckpointMismatchError) as e:
        # No intact checkpoint to resume from, or one of another model: nothing was
        # trained over it, and the message names the steps or the leaves.
        parser.error(_one_line(e))
    except (trainer_lib.CheckpointSaveError, trainer_lib.NonFiniteLossError) as e:
        # Training stopped (a full disk; a diverged loss): the last good checkpoint stays.
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    log.info("finished at step %d%s%s", result.step,
                 " (stopped early)" if result.stopped_early else "",
                 " (preempted: rerun with the same --workdir to resume)" if result.preempted
                 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
