"""Benchmarks that print JSON lines (`python -m atjax.bench ...`)."""

from __future__ import annotations

import json
import pathlib


def emit(result: dict, out: str | None = None) -> None:
    """Prints `result` as one JSON line on stdout and, with `out`, appends it there (its
    folder made if missing: a result that took minutes to compile is not lost to a path)."""
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")
