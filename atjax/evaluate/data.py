"""Prepared evaluation splits as plain numpy examples, so the tasks never touch TensorFlow.

`read_split(name, split, data_dir, sample_rate)` is the default reader of every task; tasks
take a `read` argument with the same signature, so tests (and callers with data in memory)
can hand them examples directly. An example is a dict with
  "id": str, "audio": 1-D int16 or float array at `sample_rate`,
and, as the dataset has them, "captions": list[str], "label": str (the class name),
"fold": int, "labels": list[str], "events": list of (onset s, offset s, label).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)


class TaskInputError(ValueError):
    """Settings or data that a task cannot run on; the message names what to change.

    `python -m atjax.evaluate` prints it as one line and exits 2 (no traceback)."""


def parse_sources(spec: str) -> list[tuple[str, str]]:
    """"audiocaps:test,clotho:evaluation" -> [("audiocaps", "test"), ("clotho", "evaluation")]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.replace("+", ",").split(","))):
        name, colon, split = item.partition(":")
        if not colon or not name or not split:
            raise TaskInputError(f"dataset {item!r} is not name:split (in {spec!r})")
        out.append((name, split))
    if not out:
        raise TaskInputError(f"no dataset in {spec!r}")
    return out


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class PreparedSplit:
    """A prepared TFDS split, iterated as numpy examples (audio stays int16: half the memory
    of float32 while clips wait for their batch)."""

    def __init__(self, name: str, split: str, data_dir: str, sample_rate: int):
        if not data_dir:
            raise ValueError(f"{name}:{split} needs --data_dir (the prepared TFDS folder)")
        from data_pipeline import datasets  # lazy: TensorFlow

        self.name, self.split = name, split
        self._dataset = datasets.load_split(name, split, data_dir, sample_rate=sample_rate)
        info = datasets.builder(name, data_dir, sample_rate).info
        self._features = info.features
        # All class names of a classification dataset, in label-index order.
        self.label_names = (list(info.features["label"].names)
                            if "label" in info.features else None)
        try:
            self._size = int(info.splits[split].num_examples)
        except (KeyError, TypeError):
            self._size = None

    def __len__(self) -> int:
        if self._size is None:
            raise TypeError("size unknown")
        return self._size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import tensorflow_datasets as tfds

        label_names = self.label_names
        for element in tfds.as_numpy(self._dataset):
            example: dict[str, Any] = {"id": _text(element["id"]),
                                       "audio": np.asarray(element["audio"])}
            if "captions" in element:
                example["captions"] = [_text(c) for c in element["captions"]]
            if "label" in element:
                example["label"] = label_names[int(element["label"])]
            if "fold" in element:
                example["fold"] = int(element["fold"])
            if "labels" in element:
                example["labels"] = [_text(x) for x in element["labels"]]
            if "events" in element:
                ev = element["events"]
                example["events"] = [(float(on), float(off), _text(lab)) for on, off, lab
                                     in zip(ev["onset"], ev["offset"], ev["label"])]
            yield example


def read_split(name: str, split: str, data_dir: str, sample_rate: int) -> PreparedSplit:
    """The default reader: `data_pipeline.datasets.load_split`, converted to numpy."""
    return PreparedSplit(name, split, data_dir, sample_rate)


def to_float(audio: np.ndarray) -> np.ndarray:
    """int16 PCM (or float) -> float32 in [-1, 1)."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    if not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(f"audio must be int16 PCM or float, got {audio.dtype}")
    return audio.astype(np.float32, copy=False)


def size_of(examples) -> int | None:
    try:
        return len(examples)
    except TypeError:
        return None
