"""Validation during training: the `config.evals` block -> one function of an Embedder.

Each entry is `name = dict(type=TASK, **settings)`; TASK is an evaluation task of
`atjax.evaluate` (the same code as `python -m atjax.evaluate TASK`), and its metrics are
reported as `name/metric` (e.g. `audiocaps_val/t2a_R@10`, the paper's early-stopping
criterion).
"""

from __future__ import annotations

from typing import Callable

import ml_collections


def from_config(config: ml_collections.ConfigDict) -> Callable | None:
    evals = config.get("evals")
    if not evals:
        return None
    from atjax import evaluate

    entries = {}
    for name, entry in evals.items():
        settings = dict(entry)
        task = settings.pop("type", None)
        if task not in evaluate.TASKS:
            raise ValueError(f"evals.{name}.type must be one of {sorted(evaluate.TASKS)}, "
                             f"got {task!r}")
        entries[name] = (task, settings)
    data_dir = config.data.get("data_dir", "") if "data" in config else ""

    def run(embedder) -> dict[str, float]:
        metrics = {}
        for name, (task, settings) in entries.items():
            settings = {"data_dir": data_dir, **settings}
            for key, value in evaluate.run_task(task, embedder, **settings).items():
                if isinstance(value, (int, float)):
                    metrics[f"{name}/{key}"] = float(value)
        return metrics

    return run
