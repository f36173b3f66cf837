"""Python's cyclic garbage collector, kept off the step loop's critical path.

A training process holds hundreds of thousands of long-lived Python objects (the imported
libraries, the model's module tree, the compiled step). Every step also returns a fresh
jax.Array for each leaf of the train state (1,360 for ResNet38 + RoBERTa-Large), and those
survive into the collector's oldest generation. Every 30 steps or so that triggers a full
collection, which walks every tracked object while the host holds the GIL: no step
is dispatched meanwhile. The trainer reads each step's metrics one step late, so the host
is at most about one step ahead of the device, and a pause longer than the step's slack
leaves the device idle.

With the trainer's modules imported and the paper's train state built, a full collection
takes about a hundred times longer than after `freeze()` (`python -m atjax.bench host_gc`
measures both; docs/performance.md has the figures).

`freeze()` collects once and moves every surviving object to the permanent generation,
which later collections skip; `thaw()` hands them back. Objects created after the freeze
(each step's arrays, evaluation results) are collected as usual. `Pauses` counts the
collector's runs and their host time, so the trainer's log and the step benchmark show
whether collections still land in the loop.
"""

from __future__ import annotations

import gc
import time


def freeze() -> int:
    """Collects once, then exempts every surviving object from later collections; returns
    how many objects are now frozen. Call it again after work that leaves many new
    long-lived objects (the first step's compilation)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw() -> None:
    """Returns the frozen objects to the collector (the oldest generation)."""
    gc.unfreeze()


class Pauses:
    """Counts the collector's runs and the host time they took, while entered.

    `take()` returns {"gc_collections", "gc_full", "gc_ms"} since the last `take()` (or
    the entry) and starts counting afresh; "gc_full" counts generation-2 runs."""

    def __init__(self):
        self._started: float | None = None
        self._reset()

    def _reset(self) -> None:
        self.collections, self.full, self.seconds = 0, 0, 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1
            self.full += info.get("generation") == 2
            self._started = None

    def take(self) -> dict[str, float]:
        counts = {"gc_collections": self.collections, "gc_full": self.full,
                  "gc_ms": round(self.seconds * 1e3, 3)}
        self._reset()
        return counts

    def install(self) -> "Pauses":
        """Starts counting (the counts start at zero)."""
        self._reset()
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        """Stops counting; the counts stay for a last `take()`."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def __enter__(self) -> "Pauses":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()
