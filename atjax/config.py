"""Experiment configs: Python files with `get_config(arg=None)` plus command-line overrides.

Every CLI takes `--config configs/x.py[:arg]` and any number of `--config.field=value`
(ml_collections' config_flags). Configs are locked after loading, so a misspelt field is an
error that names it instead of a silently ignored setting.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Sequence

import ml_collections

# Fields every training config must carry (the trainer and the docs rely on them).
REQUIRED_TRAIN_FIELDS = (
    "seed",
    "batch_size",
    "total_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
)


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def _load_module(path: pathlib.Path):
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix != ".py":
        raise ConfigError(f"config file {path} is not a Python file (.py) defining "
                          "get_config(arg=None)")
    spec = importlib.util.spec_from_file_location(f"_atjax_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: {e.msg}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg=None)")
    return module


def _parse_value(text: str, current):
    """Parses an override the way config_flags does: typed by the field's current value."""
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"expected a boolean, got {text!r}")
    if isinstance(current, str) or current is None:
        if current is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"cannot parse {text!r}") from e
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets `config.<dotted> = text` (parsed), naming the field when it does not exist."""
    *parents, leaf = dotted.split(".")
    node = config
    walked = []
    for name in parents:
        walked.append(name)
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ConfigError(f"unknown config field: {'.'.join(walked)}")
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"unknown config field: {dotted}")
    try:
        node[leaf] = _parse_value(text, node[leaf])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config field {dotted}: {e}") from e


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and applies `field=value` overrides (same syntax as the CLIs).

    Raises ConfigError naming any unknown field, a file that is not a Python config, or
    an argument the config file refuses.
    """
    path, _, arg = spec.partition(":")
    module = _load_module(pathlib.Path(path))
    try:
        config = module.get_config(arg or None)
    except ValueError as e:  # the config file's own check of its argument
        raise ConfigError(str(e)) from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    config.lock()
    for item in overrides:
        item = item.removeprefix("--config.").removeprefix("config.")
        field, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} is not field=value")
        apply_override(config, field, value)
    return config


def check_train_config(config: ml_collections.ConfigDict) -> None:
    missing = [f for f in REQUIRED_TRAIN_FIELDS if f not in config]
    if missing:
        raise ConfigError(f"training config lacks required fields: {', '.join(missing)}")
    # Cadences the loop divides by must be positive; evaluation alone may be off (0).
    lowest = {"batch_size": 1, "total_steps": 0, "log_every_steps": 1,
              "checkpoint_every_steps": 1, "eval_every_steps": 0}
    for field, least in lowest.items():
        value = config[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{field} must be an integer >= {least}, got {value!r}"
                              + (" (0 turns evaluation off; checkpoints and logs cannot be)"
                                 if field.endswith("_every_steps") else ""))
    # orbax would keep none with 0 (the run ends with nothing to resume or export from)
    # and fail on a negative count.
    keep = config.get("keep_checkpoints", 1)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ConfigError(f"keep_checkpoints must be an integer >= 1, got {keep!r} (the "
                          "number of latest checkpoints kept in <workdir>/checkpoints)")


def split_config_argv(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Splits argv into (config spec, config overrides, the rest).

    Accepts `--config X`, `--config=X` and `--config.a.b=v` / `--config.a.b v`.
    """
    spec, overrides, rest = None, [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a value")
            spec = args[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a.startswith("--config."):
            body = a[len("--config."):]
            if "=" in body:
                overrides.append(body)
            else:
                if i + 1 >= len(args):
                    raise ConfigError(f"{a} needs a value")
                overrides.append(f"{body}={args[i + 1]}")
                i += 1
        else:
            rest.append(a)
        i += 1
    return spec, overrides, rest
