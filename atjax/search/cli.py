"""What the search application's commands share: argument types and the errors they
report as "error: ..." (exit 1)."""

from __future__ import annotations

import argparse
import math
import sqlite3


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


# What the library raises for a bad index, folder, model or environment: reported as
# "error: ..." (exit 1). Argument errors found before any work are argparse's (exit 2).
CLI_ERRORS = (OSError, ValueError, RuntimeError, sqlite3.Error)
