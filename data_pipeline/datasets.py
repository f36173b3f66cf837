"""The registry of prepared datasets: builder objects by name, and splits as tf.data.

Names and splits (each builder reads its release in place; see its module docstring):

    audiocaps         train, val, test            captions (5 per test/val clip)
    audiocaps_2       train, val, test (AudioCaps 2.0, the repository's dataset2.0/)   captions
    clotho            development, validation, evaluation (v2.1)   captions (5 per clip)
    clotho_2022       test (DCASE 2022 task 6B retrieval evaluation)   captions
    macs              train                       captions
    fsd50k            train, val, test (dev "train"/"val" and eval)   captions, labels
    esc50             train (all clips; `fold` 1-5)                 label, fold
    urbansound8k      train (all clips; `fold` 1-10)                label, fold
    desed             eval (the public evaluation set)              events
    synthetic_events  train, heldout (procedural; no manual files)

TensorFlow and TFDS are imported when a builder is asked for, not at import time.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from typing import Any

log = logging.getLogger(__name__)

NAMES = (
    "audiocaps",
    "audiocaps_2",
    "clotho",
    "clotho_2022",
    "macs",
    "fsd50k",
    "esc50",
    "urbansound8k",
    "desed",
    "synthetic_events",
)
SPLITS = {
    "audiocaps": ("train", "val", "test"),
    "audiocaps_2": ("train", "val", "test"),
    "clotho": ("development", "validation", "evaluation"),
    "clotho_2022": ("test",),
    "macs": ("train",),
    "fsd50k": ("train", "val", "test"),
    "esc50": ("train",),
    "urbansound8k": ("train",),
    "desed": ("eval",),
    "synthetic_events": ("train", "heldout"),
}
# Datasets built procedurally: `prepare` needs no --manual_dir for them.
PROCEDURAL = ("synthetic_events",)

_BUILDER_CLASSES = {
    "audiocaps": "data_pipeline.audiocaps.builder:AudioCaps",
    "audiocaps_2": "data_pipeline.audiocaps.builder:AudioCaps2",
    "clotho": "data_pipeline.clotho.builder:Clotho",
    "clotho_2022": "data_pipeline.clotho_2022.builder:Clotho2022",
    "macs": "data_pipeline.macs.builder:Macs",
    "fsd50k": "data_pipeline.fsd50k.builder:Fsd50k",
    "esc50": "data_pipeline.esc50.builder:Esc50",
    "urbansound8k": "data_pipeline.urbansound8k.builder:UrbanSound8k",
    "desed": "data_pipeline.desed.builder:Desed",
}


def builder(name: str, data_dir: str, sample_rate: int = 32000) -> Any:
    """The TFDS builder of dataset `name` whose audio is at `sample_rate` (one config per rate)."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
    if name == "synthetic_events":
        return _synthetic_events_builder(data_dir, sample_rate)
    from data_pipeline import builder_base

    module_name, class_name = _BUILDER_CLASSES[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    config = next(
        (c for c in cls.BUILDER_CONFIGS if c.sample_rate == sample_rate),
        None,
    ) or builder_base.sample_rate_config(sample_rate)
    return cls(data_dir=str(data_dir), config=config)


def prepare_command(name: str, data_dir: str, sample_rate: int = 32000) -> str:
    manual = "" if name in PROCEDURAL else " --manual_dir DIR"
    return f"python -m data_pipeline.prepare {name}{manual} --data_dir {data_dir} --sample_rate {sample_rate}"


def load_split(name: str, split: str, data_dir: str, sample_rate: int = 32000):
    """A prepared split as a tf.data.Dataset of element dicts, in a fixed order.

    `split` may carry TFDS slicing ("train[:10%]"). An unprepared dataset or a split the
    preparation did not produce raises an error that says what to run or what was missing.
    """
    b = builder(name, data_dir, sample_rate)
    if not b.is_prepared() and name in PROCEDURAL:
        _prepare_procedural(b, name, data_dir, sample_rate)
    if not b.is_prepared():
        raise FileNotFoundError(
            f"{name} at {sample_rate} Hz is not prepared in {data_dir} (no {b.data_path}); "
            f"prepare it with:\n  {prepare_command(name, data_dir, sample_rate)}"
        )
    prepared = list(b.info.splits.keys())
    for part in split.split("+"):
        base = re.match(r"\s*([\w-]*)", part).group(1)
        if base not in prepared:
            raise ValueError(
                f"{name} ({b.data_path}) has no split {base!r}; prepared: {prepared}"
                + _why_not_prepared(b, base)
            )
    return b.as_dataset(split=split, shuffle_files=False)


def _prepare_procedural(b, name: str, data_dir: str, sample_rate: int) -> None:
    """Generates a procedural dataset on first use, as TFDS prepares a downloadable one:
    it needs no release, so a fresh data folder works without a separate prepare step.
    TFDS writes into a temporary folder and renames it when complete, so a run stopped
    part-way leaves nothing that passes for prepared."""
    log.info("%s at %d Hz is not prepared in %s: generating it now (once; later runs "
             "reuse it)", name, sample_rate, data_dir or "TFDS's default folder")
    start = time.time()
    b.download_and_prepare()
    count = sum(info.num_examples for info in b.info.splits.values())
    seconds = time.time() - start
    log.info("%s prepared: %d examples in %.0f s (%.1f examples/s) -> %s", name, count,
             seconds, count / max(seconds, 1e-9), b.data_path)


def _why_not_prepared(b, split: str) -> str:
    from data_pipeline import builder_base

    report = builder_base.read_report(b) if hasattr(b, "_read_release") else None
    entry = (report or {}).get("splits", {}).get(split)
    if entry and not entry.get("generated", True):
        return f" ({split} was not generated: {entry.get('why_not_generated')}; see {b.data_path}/skipped.json)"
    return ""


def _synthetic_events_builder(data_dir: str, sample_rate: int):
    # Owned by the synthetic-corpus package: its config carries the corpus settings (the
    # default corpus here), the sample rate among them.
    from data_pipeline import synthetic_events
    from data_pipeline.synthetic_events import corpus

    config = synthetic_events.make_builder_config(corpus.CorpusConfig(sample_rate=sample_rate))
    return synthetic_events.SyntheticEvents(data_dir=str(data_dir), config=config)
