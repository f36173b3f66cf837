"""`OUT/results.json` of an evaluation task, and which of the paper's experiments it belongs to.

The file is one flat JSON object: every metric name maps to a number, beside four
non-numeric entries: "task", "model" (the path given), "settings" (the task's settings) and
"experiment", the facts that place a model in the paper's tables, read from its training
config:
  name          config.experiment (e.g. "table5-transformer-acba"), "" if absent
  text_encoder  config.model.text.encoder ("bert-base" ... "roberta-large", "auto")
  head          config.model.head ("mlp" | "transformer")
  data          "original", "nv" (config.data.text_transform == "nv"), "acba"
                (config.data.acba_fraction > 0) or "nv+acba"; "synthetic" when the
                sources are the built-in corpus
  batches       config.data.batches ("random" | "order_hard"); "untrained" when
                config.total_steps is 0 (a model evaluated as initialised)
Each can be overridden with the task setting `experiment.<field>` (e.g. for a model whose
config lacks it). `atjax.report` groups results files by these fields.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

EXPERIMENT_FIELDS = ("name", "text_encoder", "head", "data", "batches")
NON_METRIC_KEYS = ("task", "model", "settings", "experiment")


def config_value(config, dotted: str, default=None):
    """`config.a.b` for dotted "a.b" of a ConfigDict or dict, else `default`."""
    node = config
    for part in dotted.split("."):
        try:
            if node is None or part not in node:
                return default
            node = node[part]
        except TypeError:
            return default
    return node


def experiment_of(config, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The paper-experiment descriptor of a model's training config (see module docstring)."""
    out = {f: "" for f in EXPERIMENT_FIELDS}
    if config is not None:
        out["name"] = str(config_value(config, "experiment", "") or "")
        out["text_encoder"] = str(config_value(config, "model.text.encoder", "") or "")
        out["head"] = str(config_value(config, "model.head", "") or "")
        out["batches"] = str(config_value(config, "data.batches", "") or "")
        if config_value(config, "total_steps") == 0:
            # Evaluated as initialised: it never saw a batch, whatever regime it names.
            out["batches"] = "untrained"
        sources = str(config_value(config, "data.sources", "") or "")
        if "synthetic_events" in sources:
            out["data"] = "synthetic"
        elif "data" in config:
            nv = config_value(config, "data.text_transform", "none") == "nv"
            acba = float(config_value(config, "data.acba_fraction", 0.0) or 0.0) > 0
            out["data"] = {(False, False): "original", (True, False): "nv",
                           (False, True): "acba", (True, True): "nv+acba"}[(nv, acba)]
    for key, value in (overrides or {}).items():
        if key not in out:
            raise ValueError(f"unknown experiment field {key!r}; fields: {EXPERIMENT_FIELDS}")
        if value:
            out[key] = str(value)
    return out


def _plain(value):
    """ConfigDict / tuples / numpy scalars -> JSON values."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def record(task: str, model: str, metrics: Mapping[str, float], settings, experiment):
    out: dict[str, Any] = {"task": task, "model": str(model), "settings": _plain(settings),
                           "experiment": dict(experiment)}
    for key, value in metrics.items():
        if key in out:
            raise ValueError(f"metric name {key!r} collides with a results.json entry")
        value = _plain(value)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"metric {key!r} is not a number: {value!r}")
        out[key] = value
    return out


def write(out_dir, rec: Mapping[str, Any]) -> pathlib.Path:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    # NaN is not JSON; a metric that is undefined is written as null.
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in rec.items()}
    tmp.write_text(json.dumps(clean, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def load(path) -> dict[str, Any]:
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}")
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(rec, dict) or "task" not in rec:
        raise ValueError(f"{path} is not an atjax.evaluate results file (no 'task' entry)")
    return rec


def metrics_of(rec: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in rec.items() if k not in NON_METRIC_KEYS
            and (v is None or isinstance(v, (int, float)))}


def table(metrics: Mapping[str, float]) -> str:
    """A two-column text table; confidence intervals join their metric's row."""
    rows = []
    keys = [k for k in metrics if not k.endswith(("_ci_low", "_ci_high"))]
    for key in keys:
        value = metrics[key]
        text = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float)
                                             else str(value))
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        if low is not None and high is not None:
            text += f"  [{low:.4f}, {high:.4f}]"
        rows.append((key, text))
    width = max((len(k) for k, _ in rows), default=6)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
