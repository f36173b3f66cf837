"""Evaluation tasks, registered by name: `python -m atjax.evaluate TASK --model M --out O`.

  retrieval  text-to-audio and audio-to-text retrieval: R@1/5/10, mAP@10 (Tables 1, 2, 5)
  zeroshot   zero-shot classification on ESC-50 and UrbanSound8K: fold-averaged F1 (Table 1)
  sed        sound event detection on DESED by sliding the audio encoder (Table 1)
  probes     the language probes: as/then (Table 3), PTe (Table 4, Fig. 2), BAT (Fig. 3),
             and the order controls; on the built-in synthetic corpus for a model trained on it

A task is a module with `default_config()` (its settings, an ml_collections ConfigDict) and
`run(embedder, config, *, data_dir, read, ...) -> {metric: number}`, and optionally
`check_config(config)`, which refuses bad settings (ValueError) before any embedding. Adding a benchmark is
adding one module and one line in TASKS. The same code serves the CLI, the trainer's
validation (`atjax.evaluators`) and any caller holding an embedder.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

import ml_collections

from atjax.evaluate import results as results_lib

TASKS = {
    "retrieval": "atjax.evaluate.retrieval",
    "zeroshot": "atjax.evaluate.zeroshot",
    "sed": "atjax.evaluate.sed",
    "probes": "atjax.evaluate.language_probes",
}


def task_module(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown evaluation task {name!r}; tasks: {sorted(TASKS)}")
    return importlib.import_module(TASKS[name])


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"unknown setting {'.'.join(parents[:i + 1])!r}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ValueError(f"unknown setting {dotted!r}")
    current = node[leaf]
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ValueError(f"setting {dotted!r}: {e}") from e


def task_config(name: str, settings: Mapping[str, Any] | None = None,
                overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The task's default settings with `settings` (python values, dotted keys allowed) and
    `overrides` ("field=value" strings, typed like the CLI's) applied; unknown names and
    settings the task's `check_config` refuses raise ValueError."""
    from atjax import config as config_lib

    config = task_module(name).default_config()
    config.experiment = ml_collections.ConfigDict(
        {f: "" for f in results_lib.EXPERIMENT_FIELDS})
    config.lock()
    for key, value in (settings or {}).items():
        _set(config, key, value)
    for item in overrides:
        item = item.removeprefix("--config.").removeprefix("config.")
        field, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"setting {item!r} is not field=value")
        try:
            config_lib.apply_override(config, field, value)
        except config_lib.ConfigError as e:
            raise ValueError(str(e).replace("config field", "setting")) from e
    check = getattr(task_module(name), "check_config", None)
    if check is not None:
        check(config)
    return config


def run_task(name: str, embedder, *, data_dir: str = "", read=None,
             **settings) -> dict[str, float]:
    """Runs one task on an embedder and returns its metrics (the trainer's entry point)."""
    config = task_config(name, settings)
    return run_config(name, embedder, config, data_dir=data_dir, read=read)


def run_config(name: str, embedder, config: ml_collections.ConfigDict, *, data_dir: str = "",
               read=None, **inject) -> dict[str, float]:
    from atjax.evaluate import data as data_lib

    return task_module(name).run(embedder, config, data_dir=data_dir,
                                 read=read or data_lib.read_split, **inject)


def evaluate(name: str, embedder, *, model: str, out, data_dir: str = "",
             settings: Mapping[str, Any] | None = None, overrides: Sequence[str] = (),
             read=None, **inject) -> dict[str, Any]:
    """Runs a task, writes OUT/results.json and returns its record."""
    config = task_config(name, settings, overrides)
    metrics = run_config(name, embedder, config, data_dir=data_dir, read=read, **inject)
    experiment = results_lib.experiment_of(getattr(embedder, "config", None),
                                           dict(config.experiment))
    settings_out = config.to_dict()
    settings_out.pop("experiment")
    settings_out["data_dir"] = str(data_dir)
    rec = results_lib.record(name, model, metrics, settings_out, experiment)
    results_lib.write(out, rec)
    return rec
