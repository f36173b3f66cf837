"""The training sources and their caption index.

A source is a tf.data.Dataset of captioned clips ({"id", "audio", "captions"}, optionally
a reversed-order twin: "twin_audio", "twin_captions"), named by a spec item "name:split"
(a prepared TFDS split, or "acba:DIR", a written ACBA set) or passed in directly.

Before training, each source is indexed once: its ids, captions and clip lengths, in
stored order, without the audio (`index_source`). Indexing reads every record, minutes
for the pre-training mixture, so the index of a prepared split is cached beside it, keyed
by the TFDS metadata that a new preparation rewrites. `text_table` then maps every
distinct caption to its training text (NV, when asked, runs here once per caption).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Any, Mapping

import numpy as np

from atjax import text_edits
from data_pipeline.acba import stored as acba_stored

log = logging.getLogger(__name__)

_INDEX_VERSION = 2


@dataclasses.dataclass
class Source:
    """A training source: its name in logs and stats, its dataset, where its index is cached."""

    name: str
    dataset: Any  # tf.data.Dataset
    cache: tuple[str, str] | None = None  # (index file path, key of the prepared data)
    from_spec: bool = False  # named by a "name:split" spec item (so equal names are equal data)


@dataclasses.dataclass
class Catalog:
    """One source's clips in stored order: ids and captions, no audio."""

    ids: list[str]
    samples: list[int]
    captions: list[list[str]]
    twin_captions: list[list[str]]
    has_twin_audio: list[bool]


def _default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def resolve_sources(value, *, data_dir: str, sample_rate: int, field: str = "sources",
                    clip_samples: int | None = None) -> list[Source]:
    """Source spec string, mapping name -> Dataset, list of Datasets or one Dataset.
    `clip_samples`: the training length, which a written ACBA set (`acba:DIR`) must fit."""
    import tensorflow as tf

    if isinstance(value, tf.data.Dataset):
        return [Source("source0", value)]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = [(f"source{i}", d) for i, d in enumerate(value)]
    elif isinstance(value, str):
        return [_spec_source(item.strip(), data_dir, sample_rate, field, clip_samples)
                for item in value.split("+")]
    else:
        raise TypeError(f"config.data.{field} must be a 'name:split+...' spec, a mapping or a list "
                        f"of tf.data.Datasets, got {type(value).__name__}")
    if not items:
        raise ValueError(f"config.data.{field} is empty")
    for name, d in items:
        if not isinstance(d, tf.data.Dataset):
            raise TypeError(f"config.data.{field}[{name!r}] is a {type(d).__name__}, not a tf.data.Dataset")
    return [Source(str(name), d) for name, d in items]


def _spec_source(item: str, data_dir: str, sample_rate: int, field: str,
                 clip_samples: int | None = None) -> Source:
    name, sep, split = item.partition(":")
    if not sep or not name or not split:
        raise ValueError(f"config.data.{field}: {item!r} is not 'name:split'")
    if name == "acba":
        return Source(item, acba_stored.load_written(split, sample_rate, clip_samples), from_spec=True)
    from data_pipeline import datasets

    data_dir = data_dir or _default_data_dir()
    dataset = datasets.load_split(name, split, data_dir, sample_rate)
    return Source(item, dataset, _index_cache_location(name, split, data_dir, sample_rate), from_spec=True)


def _index_cache_location(name, split, data_dir, sample_rate) -> tuple[str, str] | None:
    # Indexing reads every record (audio included), minutes for the pre-training mixture;
    # the index is cached beside the prepared split, keyed by the TFDS metadata that a
    # new preparation rewrites.
    try:
        from data_pipeline import datasets

        folder = str(datasets.builder(name, data_dir, sample_rate).data_path)
        with open(os.path.join(folder, "dataset_info.json"), "rb") as f:
            key = hashlib.sha1(f.read()).hexdigest()
    except Exception as e:  # no cache is a slower start, never a wrong one
        log.debug("no index cache for %s:%s: %s", name, split, e)
        return None
    safe = re.sub(r"[^\w.-]+", "_", split)
    return os.path.join(folder, f"atjax_index.{safe}.json"), f"{_INDEX_VERSION}:{key}:{split}"


def _strings(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def index_source(source: Source, *, use_cache: bool = True) -> Catalog:
    """Reads a source's ids and captions in stored order (with progress), or its cache."""
    import tensorflow as tf
    from tqdm import tqdm

    spec = source.dataset.element_spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"source {source.name}: elements must be dicts of features, got {spec}")
    missing = [k for k in ("id", "audio", "captions") if k not in spec]
    if missing:
        raise ValueError(f"source {source.name} lacks feature(s) {missing} (has {sorted(spec)}); "
                         "training needs a caption dataset")
    audio = spec["audio"]
    if audio.shape.rank != 1 or audio.dtype not in (tf.int16, tf.float32):
        raise ValueError(f"source {source.name}: 'audio' must be mono int16 (or float32) [num_samples], "
                         f"got {audio.dtype.name} {audio.shape}")
    twin = "twin_audio" in spec
    if twin != ("twin_captions" in spec):
        raise ValueError(f"source {source.name}: 'twin_audio' and 'twin_captions' come together")

    if use_cache and source.cache:
        path, key = source.cache
        try:
            with open(path) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                log.info("%s: caption index from %s", source.name, path)
                return Catalog(**cached["catalog"])
        except (OSError, ValueError, TypeError, KeyError):
            pass

    def project(x):
        out = {"id": x["id"], "captions": x["captions"], "samples": tf.size(x["audio"])}
        if twin:
            out["twin_captions"] = x["twin_captions"]
            out["twin_samples"] = tf.size(x["twin_audio"])
        return out

    total = int(source.dataset.cardinality())
    catalog = Catalog([], [], [], [], [])
    # No tensor-dependent Python control flow: AutoGraph's conversion would only cost time.
    project = tf.autograph.experimental.do_not_convert(project)
    elements = source.dataset.map(project, num_parallel_calls=tf.data.AUTOTUNE).prefetch(64)
    for x in tqdm(elements.as_numpy_iterator(), desc=f"indexing {source.name}", unit="clip",
                  total=total if total > 0 else None, mininterval=5.0, disable=None if total < 0 else total < 1000):
        catalog.ids.append(_strings(x["id"])[0])
        catalog.samples.append(int(x["samples"]))
        catalog.captions.append(_strings(x["captions"]))
        catalog.twin_captions.append(_strings(x["twin_captions"]) if twin else [])
        catalog.has_twin_audio.append(bool(twin and x["twin_samples"] > 0))
    if not catalog.ids:
        raise ValueError(f"source {source.name} has no clips")
    if use_cache and source.cache:
        path, key = source.cache
        try:
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({"key": key, "catalog": dataclasses.asdict(catalog)}, f)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("%s: could not cache the caption index at %s: %s", source.name, path, e)
    return catalog


def text_table(name: str, spacy_model: str, sentences: set[str]) -> dict[str, str]:
    """raw caption -> training text ("" = skip). Computed once, before training starts."""
    stripped = {s: s.strip() for s in sentences}
    if name == "none":
        return stripped
    distinct = sorted({s for s in stripped.values() if s})
    # The pipeline actually loaded: ATJAX_SPACY_MODEL redirects the default name.
    loaded = text_edits.spacy_model_name(spacy_model)
    log.info("nouns-and-verbs transform of %d distinct captions (spaCy %s%s)", len(distinct), loaded,
             f", from {text_edits.SPACY_MODEL_ENV}" if loaded != spacy_model else "")
    nv = dict(zip(distinct, text_edits.nouns_and_verbs_many(distinct, model=spacy_model)))
    return {raw: (nv[s].strip() if s else "") for raw, s in stripped.items()}
