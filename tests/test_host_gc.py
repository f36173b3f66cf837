"""atjax.host_gc: freezing the heap exempts it from collections; Pauses counts the runs."""

import gc
import weakref

import pytest

from atjax import host_gc


class _Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def _thawed():
    yield
    host_gc.thaw()


def test_frozen_objects_are_skipped_and_later_ones_collected():
    before = _Node()
    before_ref = weakref.ref(before)
    frozen = host_gc.freeze()
    # Not equality: a frozen object whose last reference goes (in this thread or in a
    # library's background thread) leaves the permanent generation at once, and nothing
    # but another freeze adds to it.
    assert 0 < gc.get_freeze_count() <= frozen
    del before  # garbage now, but frozen: a full collection does not look at it
    gc.collect()
    assert before_ref() is not None

    after = _Node()
    after_ref = weakref.ref(after)
    del after  # created after the freeze: collected as usual
    gc.collect()
    assert after_ref() is None

    host_gc.thaw()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert before_ref() is None


def test_pauses_counts_runs_by_generation_and_resets():
    with host_gc.Pauses() as pauses:
        gc.collect(0)
        gc.collect(1)
        gc.collect(2)
        first = pauses.take()
        gc.collect(2)
        second = pauses.take()
    gc.collect(2)  # not counted: removed
    assert first["gc_collections"] == 3 and first["gc_full"] == 1
    assert first["gc_ms"] >= 0.0
    assert second == {"gc_collections": 1, "gc_full": 1, "gc_ms": second["gc_ms"]}
    assert pauses.take() == {"gc_collections": 0, "gc_full": 0, "gc_ms": 0.0}
    assert pauses._callback not in gc.callbacks


def test_install_twice_counts_once():
    pauses = host_gc.Pauses().install()
    pauses.install()
    try:
        gc.collect(2)
        assert pauses.take()["gc_collections"] == 1
    finally:
        pauses.remove()
    assert pauses._callback not in gc.callbacks


def test_bench_command_on_the_tiny_model(tmp_path):
    """`python -m atjax.bench host_gc` end to end: a full collection of the training
    process's heap is slow until the heap is frozen, and the counts add up."""
    import json

    from atjax.bench import __main__ as bench

    out = tmp_path / "gc.jsonl"
    assert bench.main(["host_gc", "--config", "configs/synthetic.py:size=tiny",
                       "--steps", "20", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["bench"] == "host_gc" and r["steps"] == 20 and r["state_leaves"] > 100
    # Freezing exempts what is alive: most of the tracked objects, and a full collection
    # then has (almost) nothing to walk.
    assert r["frozen_objects"] > 0.9 * r["tracked_objects"] > 10_000
    assert r["full_collection_ms"] > 10 * r["full_collection_ms_frozen"]
    for phase in ("unfrozen", "frozen"):
        counts = r[phase]
        assert counts["gc_collections"] >= counts["gc_full"] >= 0
        assert counts["gc_ms"] >= 0 and counts["ms_per_call"] > 0
    assert gc.get_freeze_count() == 0  # the command hands the heap back


def test_bench_command_rejects_no_steps():
    from atjax.bench import host_gc as bench

    with pytest.raises(SystemExit):
        bench.main(["--config", "configs/synthetic.py:size=tiny", "--steps", "0"])
