"""Benchmarks that print JSON lines (`python -m atjax.bench ...`)."""

from __future__ import annotations

import json


def emit(result: dict, out: str | None = None) -> None:
    """Prints `result` as one JSON line on stdout and, with `out`, appends it there."""
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
