"""The training input: the one narrow interface between the trainer and tf.data.

`TrainInput(config.data, batch_size=..., ...)` yields fixed-shape numpy batches
`{"audio": float32 [B, clip_samples], "input_ids": int32 [B, L], "attention_mask": int32 [B, L]}`
and saves/restores its position (`get_state` / `set_state`).

What one epoch is. Every (clip, caption) pair is one training example, as the paper counts
pairs (a Clotho clip with 5 captions gives 5). Before training, each source is indexed once
(ids, captions, clip lengths; cached beside a prepared TFDS split, as indexing reads every
record): empty captions and clips without samples are skipped and counted there, the NV
text transform runs there once per distinct caption (spaCy's nlp.pipe), and the ACBA pool
is chosen there (with NV, each ACBA part is transformed and the preposition kept). An
epoch is then a fixed number of *units* per host, drawn from up to three streams:
- plain: one example (random batches) or two examples packed together (order_hard);
- twin: an example that carries its reversed-order twin (the synthetic corpus); random
  batches use one of the two orders at random, order_hard emits both, adjacent;
- acba: an ACBA pair synthesised on the fly (data_pipeline.acba); order_hard emits
  (A then B) and (B then A), each with its own true-order sentence.
A unit never straddles a batch (batches hold whole units), so twins share a batch.
`acba_fraction` is the fraction of training rows that are ACBA pairs; the paper's +ACBA
set (50k among 173k pairs) is acba_fraction = 50/173.

Order and randomness are pure functions of (seed, process, epoch, position):
- hosts take disjoint clips (clip position modulo process_count);
- a source's captions come in rounds (round r: caption r of every clip), so that a clip's
  captions are far apart before the shuffle buffer (see `_Graph._examples`);
- within an epoch the streams, and the sources inside a stream, are interleaved by a
  stateless permutation of their exact counts; each stream is shuffled through a seeded
  buffer (`shuffle_buffer` examples; it holds decoded int16 clips, so it costs memory:
  2048 x 10 s at 32 kHz is about 1.3 GB per stream);
- crops, twin orders, ACBA captions/prepositions use stateless random numbers keyed by
  the unit's index.
A resumed run rebuilds the epoch and skips the consumed units *before* the crop,
cross-fade, float conversion and tokenisation maps (the skipped clips are still read and
shuffled, which is what replays the shuffle buffers exactly), and so reproduces the
batches of an uninterrupted run. tf.data's seeded shuffles also depend on TensorFlow's
global seed: atjax never sets it; a program that does must set the same one on resume.

Crop/pad: a clip longer than `clip_samples` is cropped at a uniform random position, a
shorter one is zero-padded at the end. `clip_samples` is a whole number of chunks when
the model has a chunked (Transformer) audio head; the model reshapes [B, N] -> [B, T, C].

Sharding caveat: hosts shard clips after reading, so each host reads every record of
every source; the decode-heavy work (crop, fade, tokenise) is done only for its share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from data_pipeline import acba

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w")

PRETRAINING_MIXTURE = "audiocaps:train+clotho:development+macs:train+fsd50k:train"
BATCHES = ("random", "order_hard")
TEXT_TRANSFORMS = ("none", "nv")
# 2: a clip's captions in rounds (2026-11-27). A version-1 position (captions adjacent)
# is still taken, with a warning: its epoch goes on in the new order.
STATE_VERSION = 2
_INDEX_VERSION = 2
_MAX_EPOCHS = 1 << 40

# Stream labels (also the tags folded into random keys, so streams never share numbers).
PLAIN, TWIN, ACBA = 0, 1, 2
_STREAM_NAMES = ("plain", "twin", "acba")
_MIX, _SHUFFLE, _UNIT, _CHOICE, _POOL = 10, 11, 12, 13, 14


def default_config() -> ml_collections.ConfigDict:
    """The `config.data` block."""
    c = ml_collections.ConfigDict()
    # A source spec "name:split+name:split" resolved with data_pipeline.datasets.load_split
    # ("acba:DIR" reads a set written by `python -m data_pipeline.acba write`), or a
    # mapping name -> tf.data.Dataset / a list of tf.data.Datasets (tests, injected data).
    c.sources = ml_collections.FieldReference(PRETRAINING_MIXTURE, field_type=object)
    c.data_dir = ""  # prepared TFDS data; "" = TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.acba_fraction = 0.0
    c.acba_sources = ml_collections.FieldReference("audiocaps:train", field_type=object)
    c.crossfade_seconds = 1.0
    c.batches = "random"  # "random" (the paper) | "order_hard" (reversed twins share a batch)
    c.text_transform = "none"  # "none" | "nv" (nouns and verbs only, paper Sec. 3.1)
    c.spacy_model = "en_core_web_sm"
    c.shuffle_buffer = 2048  # examples per stream
    c.prefetch_batches = 2
    c.parallel_calls = -1  # per map; -1 = tf.data.AUTOTUNE
    c.index_cache = True  # cache each prepared split's caption index beside it
    return c


# ---------------------------------------------------------------------------------------
# Sources and their caption index


@dataclasses.dataclass
class _Source:
    name: str
    dataset: Any  # tf.data.Dataset
    cache: tuple[str, str] | None = None  # (index file path, key of the prepared data)
    from_spec: bool = False  # named by a "name:split" spec item (so equal names are equal data)


@dataclasses.dataclass
class _Catalog:
    """One source's clips in stored order: ids and captions, no audio."""

    ids: list[str]
    samples: list[int]
    captions: list[list[str]]
    twin_captions: list[list[str]]
    has_twin_audio: list[bool]


def _default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def resolve_sources(value, *, data_dir: str, sample_rate: int, field: str = "sources",
                    clip_samples: int | None = None) -> list[_Source]:
    """Source spec string, mapping name -> Dataset, list of Datasets or one Dataset.
    `clip_samples`: the training length, which a written ACBA set (`acba:DIR`) must fit."""
    import tensorflow as tf

    if isinstance(value, tf.data.Dataset):
        return [_Source("source0", value)]
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
    return [_Source(str(name), d) for name, d in items]


def _spec_source(item: str, data_dir: str, sample_rate: int, field: str,
                 clip_samples: int | None = None) -> _Source:
    name, sep, split = item.partition(":")
    if not sep or not name or not split:
        raise ValueError(f"config.data.{field}: {item!r} is not 'name:split'")
    if name == "acba":
        return _Source(item, acba.load_written(split, sample_rate, clip_samples), from_spec=True)
    from data_pipeline import datasets

    data_dir = data_dir or _default_data_dir()
    dataset = datasets.load_split(name, split, data_dir, sample_rate)
    return _Source(item, dataset, _index_cache_location(name, split, data_dir, sample_rate), from_spec=True)


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


def index_source(source: _Source, *, use_cache: bool = True) -> _Catalog:
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
                return _Catalog(**cached["catalog"])
        except (OSError, ValueError, TypeError, KeyError):
            pass

    def project(x):
        out = {"id": x["id"], "captions": x["captions"], "samples": tf.size(x["audio"])}
        if twin:
            out["twin_captions"] = x["twin_captions"]
            out["twin_samples"] = tf.size(x["twin_audio"])
        return out

    total = int(source.dataset.cardinality())
    catalog = _Catalog([], [], [], [], [])
    elements = source.dataset.map(_no_autograph(project), num_parallel_calls=tf.data.AUTOTUNE).prefetch(64)
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


def nouns_and_verbs_many(sentences: list[str], *, model: str) -> list[str]:
    """The NV transform (atjax.probes.text; spaCy tags each distinct sentence once)."""
    from atjax.probes import text

    return text.nouns_and_verbs_many(sentences, model=model)


def _text_transform(name: str, spacy_model: str, sentences: set[str]) -> dict[str, str]:
    """raw caption -> training text ("" = skip). Computed once, before training starts."""
    stripped = {s: s.strip() for s in sentences}
    if name == "none":
        return stripped
    distinct = sorted({s for s in stripped.values() if s})
    from atjax.probes import text

    # The pipeline actually loaded: ATJAX_SPACY_MODEL redirects the default name.
    loaded = text.spacy_model_name(spacy_model)
    log.info("nouns-and-verbs transform of %d distinct captions (spaCy %s%s)", len(distinct), loaded,
             f", from {text.SPACY_MODEL_ENV}" if loaded != spacy_model else "")
    nv = dict(zip(distinct, nouns_and_verbs_many(distinct, model=spacy_model)))
    return {raw: (nv[s].strip() if s else "") for raw, s in stripped.items()}


# ---------------------------------------------------------------------------------------
# The per-host plan: which clips, which texts, how many units of each stream per epoch


@dataclasses.dataclass
class _SourcePlan:
    source: _Source
    ids: list[str]
    keep: np.ndarray  # bool [num_clips]: on this host and in this stream
    texts: list[list[str]]  # per clip (empty where not kept)
    extra: list[list[str]]  # twin texts aligned with texts, or capitalised ACBA clauses
    examples: int  # rows of text over kept clips (ACBA: kept clips)


def _host_mask(n: int, process_index: int, process_count: int) -> np.ndarray:
    return np.arange(n) % process_count == process_index


class _Counter(dict):
    def add(self, key, n=1):
        self[key] = self.get(key, 0) + n


def _plan_captions(source: _Source, cat: _Catalog, table: dict[str, str], host: np.ndarray,
                   counts: _Counter) -> tuple[_SourcePlan, _SourcePlan]:
    """(plain plan, twin plan) of one main source."""
    n = len(cat.ids)
    plain = _SourcePlan(source, cat.ids, np.zeros(n, bool), [[] for _ in range(n)], [[] for _ in range(n)], 0)
    twin = _SourcePlan(source, cat.ids, np.zeros(n, bool), [[] for _ in range(n)], [[] for _ in range(n)], 0)
    for i in range(n):
        if bool(cat.twin_captions[i]) != cat.has_twin_audio[i]:
            raise ValueError(f"source {source.name}, clip {cat.ids[i]}: twin_audio and twin_captions "
                             "must both be empty or both be present")
        if not host[i]:
            continue
        if cat.samples[i] == 0:
            counts.add("empty_audio_skipped")
            continue
        texts = []
        for c in cat.captions[i]:
            counts.add("captions")
            if not _WORD.search(c):  # empty, or punctuation alone (".")
                counts.add("empty_captions_skipped")
            elif not table[c]:
                counts.add("empty_after_transform_skipped")
            else:
                texts.append(table[c])
        twins = [table[c] for c in cat.twin_captions[i] if table[c]]
        if not texts:
            continue
        if cat.has_twin_audio[i] and not twins:
            counts.add("twins_without_text")
        plan = twin if (cat.has_twin_audio[i] and twins) else plain
        plan.keep[i] = True
        plan.texts[i] = texts
        if plan is twin:
            plan.extra[i] = [twins[j % len(twins)] for j in range(len(texts))]
        plan.examples += len(texts)
    return plain, twin


def _plan_pool(source: _Source, cat: _Catalog, table: dict[str, str], host: np.ndarray,
               counts: _Counter, fade: int) -> _SourcePlan:
    """The ACBA pool of one source: clips with at least one eligible caption, as clauses.

    Clips shorter than two cross-fades (`fade` samples each) are skipped and counted
    (`pool_clips_shorter_than_two_crossfades`): the cross-fade would cover most or all of
    such a clip, so it would not be heard on its own before or after the other, and the
    caption would state an order the audio does not have."""
    n = len(cat.ids)
    plan = _SourcePlan(source, cat.ids, np.zeros(n, bool), [[] for _ in range(n)], [[] for _ in range(n)], 0)
    for i in np.flatnonzero(host):
        if cat.samples[i] == 0:
            counts.add("pool_clips_without_audio")
            continue
        if cat.samples[i] < 2 * fade:
            counts.add("pool_clips_shorter_than_two_crossfades")
            continue
        clauses, order_word = [], False
        for c in cat.captions[i]:
            if not _WORD.search(c):
                continue
            if not acba.eligible(c):
                order_word = True
                continue
            try:
                clauses.append(acba.clause(table[c]))
            except ValueError:  # nothing left once the text transform / punctuation is gone
                continue
        counts.add("pool_clips_without_eligible_caption", int(not clauses))
        if not clauses:
            # Why: a caption names an order already, or none has words (left).
            counts.add("pool_clips_with_order_word_captions_only" if order_word
                       else "pool_clips_with_empty_captions_only")
        if clauses:
            plan.keep[i] = True
            plan.texts[i] = clauses
            plan.extra[i] = [acba.capitalise(s) for s in clauses]
            plan.examples += 1
    return plan


def pool_exclusions(counts: Mapping[str, int], crossfade_seconds: float,
                    setting: str = "data.crossfade_seconds") -> str:
    """Why ACBA pool clips were left out, one clause per reason with its count (counts of
    `_plan_pool`), for the error that says too few clips are left; "" if none were.
    `setting` names the cross-fade length's setting."""
    reasons = (
        ("pool_clips_shorter_than_two_crossfades",
         f"shorter than two cross-fades ({2 * crossfade_seconds:.2f} s; {setting})"),
        ("pool_clips_with_order_word_captions_only",
         f"whose every caption names an order ({'/'.join(acba.PREPOSITIONS)})"),
        ("pool_clips_with_empty_captions_only",
         "whose captions are empty (or empty after data.text_transform)"),
        ("pool_clips_without_audio", "without audio"))
    parts = [f"{counts[key]} {why}" for key, why in reasons if counts.get(key)]
    return "excluded: " + "; ".join(parts) if parts else ""


# ---------------------------------------------------------------------------------------
# tf.data graph pieces


def _no_autograph(fn):
    # The graph functions here have no tensor-dependent Python control flow; skipping
    # AutoGraph's source conversion halves the time to build the pipeline.
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


def _fold(key, *data):
    import tensorflow as tf

    for d in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64))
    return key


def _shuffle_seed(key):
    import tensorflow as tf

    return tf.random.stateless_uniform([], key, minval=0, maxval=2**31 - 1, dtype=tf.int64)


def _to_float(audio):
    # After cropping, so that only the samples kept are converted.
    import tensorflow as tf

    if audio.dtype == tf.int16:
        return tf.cast(audio, tf.float32) / 32768.0
    return tf.cast(audio, tf.float32)


def _crop_or_pad(audio, clip_samples: int, fraction):
    """Uniform random crop of a longer clip; zero-padding at the end of a shorter one."""
    import tensorflow as tf

    n = tf.shape(audio, out_type=tf.int64)[0]
    start = acba.crop_offset_tf(n, tf.minimum(n, clip_samples), fraction)
    window = audio[start:start + clip_samples]
    window = tf.pad(window, [[0, clip_samples - tf.shape(window, out_type=tf.int64)[0]]])
    return tf.ensure_shape(window, [clip_samples])


def _ragged(rows: list[list[str]]):
    import tensorflow as tf

    flat = [t for row in rows for t in row]
    return tf.RaggedTensor.from_row_lengths(tf.constant(flat, tf.string, shape=[len(flat)]),
                                            tf.constant([len(r) for r in rows], tf.int64), validate=False)


def _mix(datasets: list, counts: list[int], key):
    """Interleaves datasets by a stateless permutation of their exact element counts."""
    import tensorflow as tf

    if len(datasets) == 1:
        return datasets[0]
    labels = tf.repeat(tf.range(len(counts), dtype=tf.int64), counts)
    order = tf.random.experimental.stateless_shuffle(labels, key)
    return tf.data.Dataset.choose_from_datasets(datasets, tf.data.Dataset.from_tensor_slices(order))


class _Graph:
    """Builds the per-epoch tf.data streams from the plan's constants."""

    def __init__(self, *, seed: int, process_index: int, clip_samples: int | None, fade: int,
                 rows_per_unit: int, shuffle_buffer: int, parallel_calls: int):
        import tensorflow as tf

        self.tf = tf
        self.base = tf.constant([seed, process_index], tf.int64)
        self.clip_samples = clip_samples
        self.fade = fade
        self.rows = rows_per_unit
        self.buffer = shuffle_buffer
        self.parallel = tf.data.AUTOTUNE if parallel_calls < 0 else parallel_calls

    def _clips(self, plan: _SourcePlan):
        """The kept clips of one source, in stored order, with their position."""
        tf = self.tf
        keep = tf.constant(plan.keep)
        ids = tf.constant(plan.ids, tf.string)
        name = plan.source.name

        def checked(i, x):
            # The plan was made from an index of this source: a source whose order changed
            # since (re-prepared, shuffled files) must fail, not pair audio with wrong texts.
            check = tf.debugging.assert_equal(
                x["id"], ids[i], message=f"source {name} no longer matches its caption index "
                "(re-prepared or reordered?); delete its atjax_index.*.json and restart")
            with tf.control_dependencies([check]):
                return i, dict(x, audio=tf.identity(x["audio"]))

        return plan.source.dataset.enumerate().filter(_no_autograph(lambda i, x: keep[i])).map(_no_autograph(checked))

    def _examples(self, plan: _SourcePlan, twin: bool):
        """One example per (clip, caption), in rounds: round r is caption r of every clip
        that has more than r captions, in stored order.

        Not a clip's captions one after another: the shuffle buffer mixes only
        `shuffle_buffer` neighbouring examples, so adjacent captions of one clip (5 in
        Clotho, 2-5 in MACS) would often meet in a batch, where InfoNCE takes the second as
        a negative of the first's audio. Over an epoch of the paper's pre-training mixture
        in batches of 64 (`python -m data_pipeline.bench --caption_spread --shuffle_buffer
        2048`, `benchmarks/cpu_caption_spread_2026-11-27.jsonl`), 851 of 1,960 batches held
        some clip twice with adjacent captions; none with rounds, and 35 in a uniform
        permutation of the same examples. A source is read once per round."""
        tf = self.tf
        texts, extra = _ragged(plan.texts), _ragged(plan.extra)
        counts = tf.constant([len(t) for t in plan.texts], tf.int64)

        def round_r(r):
            def has(i, x):
                return counts[i] > r

            def example(i, x):
                row = {"audio": x["audio"], "text": texts[i][r]}
                if twin:
                    row.update(twin_audio=x["twin_audio"], twin_text=extra[i][r])
                return row

            return self._clips(plan).filter(_no_autograph(has)).map(_no_autograph(example))

        rounds = max((len(t) for t in plan.texts), default=0)
        examples = round_r(0)
        for r in range(1, rounds):
            examples = examples.concatenate(round_r(r))
        return examples

    def _processed(self, units, skip, process):
        # The skip comes before the map: a resumed run does not crop, fade or convert the
        # units it has already trained on.
        return units.enumerate().skip(skip).map(_no_autograph(process), num_parallel_calls=self.parallel,
                                                deterministic=True)

    def _shuffled(self, plans: list[_SourcePlan], twin: bool, key):
        mixed = _mix([self._examples(p, twin) for p in plans], [p.examples for p in plans], _fold(key, _MIX))
        return mixed.shuffle(self.buffer, seed=_shuffle_seed(_fold(key, _SHUFFLE)), reshuffle_each_iteration=False)

    def plain(self, plans, epoch, skip):
        tf = self.tf
        key = _fold(self.base, PLAIN, epoch)
        units = self._shuffled(plans, False, key)
        if self.rows == 2:
            units = units.ragged_batch(2, drop_remainder=True)

        def process(unit, x):
            u = tf.random.stateless_uniform([2], _fold(key, _UNIT, unit), dtype=tf.float64)
            if self.rows == 1:
                audio = _to_float(_crop_or_pad(x["audio"], self.clip_samples, u[0]))[tf.newaxis]
                return {"audio": audio, "text": x["text"][tf.newaxis]}
            audio = tf.stack([_to_float(_crop_or_pad(x["audio"][r], self.clip_samples, u[r])) for r in (0, 1)])
            return {"audio": audio, "text": x["text"]}

        return self._processed(units, skip, process)

    def twin(self, plans, epoch, skip):
        tf = self.tf
        key = _fold(self.base, TWIN, epoch)

        def process(unit, x):
            u = tf.random.stateless_uniform([2], _fold(key, _UNIT, unit), dtype=tf.float64)
            # One crop position for both orders: twins keep the same timing.
            a = _to_float(_crop_or_pad(x["audio"], self.clip_samples, u[0]))
            b = _to_float(_crop_or_pad(x["twin_audio"], self.clip_samples, u[0]))
            if self.rows == 2:
                return {"audio": tf.stack([a, b]), "text": tf.stack([x["text"], x["twin_text"]])}
            use_twin = u[1] < 0.5
            return {"audio": tf.where(use_twin, b, a)[tf.newaxis],
                    "text": tf.where(use_twin, x["twin_text"], x["text"])[tf.newaxis]}

        return self._processed(self._shuffled(plans, True, key), skip, process)

    def _pool_clips(self, plan: _SourcePlan):
        clauses, capitalised = _ragged(plan.texts), _ragged(plan.extra)

        def clip(i, x):
            return {"audio": x["audio"], "id": x["id"], "clause": clauses[i], "capitalised": capitalised[i]}

        return self._clips(plan).map(_no_autograph(clip))

    def acba(self, plans, epoch, skip, units: int | None):
        """ACBA units; `units=None` makes the stream endless (the ACBA writer)."""
        tf = self.tf
        key = _fold(self.base, ACBA, epoch)
        pool = [self._pool_clips(plan) for plan in plans]
        counts = [p.examples for p in plans]

        def one_pass(n):
            # Each pass draws every pool clip once, so the two clips of a pair always differ.
            pkey = _fold(key, _POOL, n)
            mixed = _mix(pool, counts, _fold(pkey, _MIX))
            mixed = mixed.shuffle(self.buffer, seed=_shuffle_seed(_fold(pkey, _SHUFFLE)),
                                  reshuffle_each_iteration=False)
            return mixed.ragged_batch(2, drop_remainder=True)

        pairs = tf.data.Dataset.range(_MAX_EPOCHS).flat_map(_no_autograph(one_pass))
        if units is not None:
            pairs = pairs.take(units)
        after = acba.PREPOSITIONS.index("after")
        joiners = tf.constant([f" {p} " for p in acba.PREPOSITIONS])

        def pick(rows, r, fraction):
            count = tf.cast(rows.row_lengths()[r], tf.float64)
            return tf.cast(tf.minimum(tf.floor(fraction * count), count - 1), tf.int64)

        def sentence(c, s, first, second, prep):
            # acba.join_captions, from clauses precomputed by the same Python function.
            return tf.where(prep == after, c[second] + " after " + s[first], c[first] + joiners[prep] + s[second])

        def process(unit, x):
            u = tf.random.stateless_uniform([5], _fold(key, _UNIT, unit), dtype=tf.float64)
            j = [pick(x["clause"], r, u[r]) for r in (0, 1)]
            s = [x["clause"][r][j[r]] for r in (0, 1)]
            c = [x["capitalised"][r][j[r]] for r in (0, 1)]
            prep = tf.cast(tf.minimum(tf.floor(u[2] * len(acba.PREPOSITIONS)), len(acba.PREPOSITIONS) - 1), tf.int32)
            clips = [x["audio"][r] for r in (0, 1)]
            orders = [(0, 1), (1, 0)][: self.rows]
            audio = [acba.fit_pair_tf(clips[a], clips[b], clip_samples=self.clip_samples, fade=self.fade,
                                      first_fraction=u[3 + a], second_fraction=u[3 + b]) for a, b in orders]
            return {"audio": tf.stack(audio), "text": tf.stack([sentence(c, s, a, b, prep) for a, b in orders]),
                    "first_id": tf.stack([x["id"][a] for a, _ in orders]),
                    "second_id": tf.stack([x["id"][b] for _, b in orders]),
                    "preposition": tf.fill([len(orders)], prep)}

        return self._processed(pairs, skip, process)


# ---------------------------------------------------------------------------------------
# The training input


_REQUIRED = tuple(default_config().keys())


def _check_config(config) -> None:
    keys = set(config.keys())
    missing = [k for k in _REQUIRED if k not in keys]
    unknown = sorted(keys - set(_REQUIRED))
    if missing or unknown:
        raise ValueError(f"config.data: missing fields {missing}, unknown fields {unknown}; "
                         "start from data_pipeline.pipeline.default_config()")
    if config.batches not in BATCHES:
        raise ValueError(f"config.data.batches={config.batches!r}; expected one of {BATCHES}")
    if config.text_transform not in TEXT_TRANSFORMS:
        raise ValueError(f"config.data.text_transform={config.text_transform!r}; expected one of {TEXT_TRANSFORMS}")
    if not 0.0 <= config.acba_fraction <= 1.0:
        raise ValueError(f"config.data.acba_fraction={config.acba_fraction} is not in [0, 1]")
    if config.crossfade_seconds < 0:
        raise ValueError(f"config.data.crossfade_seconds={config.crossfade_seconds} is negative")
    if config.shuffle_buffer < 1:
        raise ValueError(f"config.data.shuffle_buffer={config.shuffle_buffer} must be >= 1")


class TrainInput:
    """Batches of (audio, tokenised caption) for one host; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict, *, batch_size: int, sample_rate: int,
                 clip_samples: int, chunk_samples: int | None,
                 tokenizer: Callable[[list[str]], dict[str, np.ndarray]], seed: int,
                 process_index: int = 0, process_count: int = 1):
        _check_config(config)
        if clip_samples <= 0:
            raise ValueError(f"clip_samples={clip_samples} must be positive")
        if chunk_samples is not None and (chunk_samples <= 0 or clip_samples % chunk_samples):
            raise ValueError(f"clip_samples={clip_samples} is not a whole number of chunks of {chunk_samples}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
        self.rows_per_unit = 2 if config.batches == "order_hard" else 1
        if batch_size <= 0 or batch_size % self.rows_per_unit:
            kind = "even number (order_hard batches hold pairs)" if self.rows_per_unit == 2 else "number"
            raise ValueError(f"batch_size={batch_size} per host must be a positive {kind}")
        self.config = config
        self.batch_size = batch_size
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.seed = int(seed)
        self.process_index, self.process_count = process_index, process_count
        self._tokenizer = tokenizer
        self._text_length = self._probe_tokenizer()

        main = resolve_sources(config.sources, data_dir=config.data_dir, sample_rate=sample_rate,
                               clip_samples=clip_samples)
        pool = []
        if config.acba_fraction > 0:
            # A pool source that is also a main source (AudioCaps train) is indexed once.
            for s in resolve_sources(config.acba_sources, data_dir=config.data_dir, sample_rate=sample_rate,
                                     field="acba_sources"):
                same = [m for m in main if m.dataset is s.dataset or (m.from_spec and s.from_spec and m.name == s.name)]
                pool.append(same[0] if same else s)
        catalogs: dict[int, _Catalog] = {}
        for s in main + pool:
            if id(s) not in catalogs:
                catalogs[id(s)] = index_source(s, use_cache=config.index_cache)
        sentences = {c for cat in catalogs.values() for clip in cat.captions + cat.twin_captions for c in clip}
        table = _text_transform(config.text_transform, config.spacy_model, sentences)

        self.stats: dict[str, Any] = {}
        self._plans = {PLAIN: [], TWIN: [], ACBA: []}
        for s in main:
            counts = _Counter()
            cat = catalogs[id(s)]
            plain, twin = _plan_captions(s, cat, table, _host_mask(len(cat.ids), process_index, process_count), counts)
            for label, plan in ((PLAIN, plain), (TWIN, twin)):
                if plan.examples:
                    self._plans[label].append(plan)
            self.stats[s.name] = dict(counts, clips=len(cat.ids), plain_examples=plain.examples,
                                      twin_examples=twin.examples)
            log.info("%s: %d clips; on host %d/%d: %d examples (%d with a twin); skipped: %d empty "
                     "captions, %d empty after text_transform=%s, %d clips without audio", s.name, len(cat.ids),
                     process_index, process_count, plain.examples + twin.examples, twin.examples,
                     counts.get("empty_captions_skipped", 0), counts.get("empty_after_transform_skipped", 0),
                     config.text_transform, counts.get("empty_audio_skipped", 0))
        for s in pool:
            counts = _Counter()
            cat = catalogs[id(s)]
            plan = _plan_pool(s, cat, table, _host_mask(len(cat.ids), process_index, process_count), counts,
                              acba.fade_samples(sample_rate, config.crossfade_seconds))
            if plan.examples:
                self._plans[ACBA].append(plan)
            self.stats[f"acba_pool/{s.name}"] = dict(counts, pool_clips=plan.examples)
            log.info("ACBA pool %s: %d of its clips on host %d have a caption without before/after/then/"
                     "followed by and two cross-fades of audio", s.name, plan.examples, process_index)
            if counts.get("pool_clips_shorter_than_two_crossfades"):
                log.warning("ACBA pool %s: skipped %d clips shorter than two cross-fades (%.2f s)", s.name,
                            counts["pool_clips_shorter_than_two_crossfades"], 2 * config.crossfade_seconds)

        self._units = self._count_units(config.acba_fraction)
        self.units_per_epoch = sum(self._units.values())
        if self.units_per_epoch == 0:
            raise ValueError(f"no training examples on host {process_index} of {process_count}")
        self.examples_per_epoch = self.units_per_epoch * self.rows_per_unit
        self.stats["units_per_epoch"] = {_STREAM_NAMES[k]: v for k, v in self._units.items()}
        log.info("one epoch on host %d: %d rows in units of %d (%s)", process_index, self.examples_per_epoch,
                 self.rows_per_unit, ", ".join(f"{_STREAM_NAMES[k]} {v}" for k, v in self._units.items()))
        self._fingerprint = self._make_fingerprint()
        self._start_units = 0
        self._batches = 0
        self._iterator = None

    # -- planning ------------------------------------------------------------------------

    def _count_units(self, fraction: float) -> dict[int, int]:
        examples = {k: sum(p.examples for p in plans) for k, plans in self._plans.items()}
        units = {PLAIN: examples[PLAIN] // self.rows_per_unit, TWIN: examples[TWIN]}
        main_rows = (units[PLAIN] + units[TWIN]) * self.rows_per_unit
        if fraction == 0:
            units[ACBA] = 0
        elif fraction == 1:  # ACBA only; an epoch is one pass over the pool
            units = {PLAIN: 0, TWIN: 0, ACBA: examples[ACBA] // 2}
        else:
            units[ACBA] = int(round(main_rows * fraction / (1 - fraction) / self.rows_per_unit))
        if units[ACBA] and examples[ACBA] < 2:
            excluded = _Counter()
            for key, stats in self.stats.items():
                if key.startswith("acba_pool/"):
                    for reason, n in stats.items():
                        excluded.add(reason, n)
            why = pool_exclusions(excluded, self.config.crossfade_seconds)
            raise ValueError(f"ACBA needs at least 2 pool clips with an eligible caption on host "
                             f"{self.process_index}, found {examples[ACBA]} in {self.config.acba_sources}"
                             + (f"; {why}" if why else ""))
        return {k: v for k, v in units.items() if v}

    def _make_fingerprint(self) -> dict:
        c = self.config
        digest = hashlib.sha1()
        for label, plans in sorted(self._plans.items()):
            for p in plans:
                digest.update(f"{label}|{p.source.name}|{len(p.ids)}|{p.examples}|{p.ids[0]}|{p.ids[-1]}".encode())
        return dict(seed=self.seed, process_index=self.process_index, process_count=self.process_count,
                    units_per_epoch=self.units_per_epoch, rows_per_unit=self.rows_per_unit,
                    sample_rate=self.sample_rate, clip_samples=self.clip_samples,
                    acba_fraction=c.acba_fraction, crossfade_seconds=c.crossfade_seconds,
                    text_transform=c.text_transform, shuffle_buffer=c.shuffle_buffer,
                    data=digest.hexdigest())

    def _probe_tokenizer(self) -> int:
        out = self._tokenizer(["a probe sentence"])
        if not isinstance(out, Mapping) or "input_ids" not in out or "attention_mask" not in out:
            raise TypeError("tokenizer(list[str]) must return a mapping with 'input_ids' and 'attention_mask'")
        ids = np.asarray(out["input_ids"])
        if ids.ndim != 2 or ids.shape[0] != 1 or np.asarray(out["attention_mask"]).shape != ids.shape:
            raise ValueError(f"tokenizer must return [batch, length] arrays, got {ids.shape}")
        return int(ids.shape[1])

    # -- the tf.data graph ---------------------------------------------------------------

    def _tokenize(self, texts: np.ndarray):
        strings = [t.decode("utf-8") for t in texts]
        out = self._tokenizer(strings)
        ids = np.asarray(out["input_ids"], np.int32)
        mask = np.asarray(out["attention_mask"], np.int32)
        if ids.shape != (len(strings), self._text_length) or mask.shape != ids.shape:
            raise ValueError(f"tokenizer returned input_ids {ids.shape} / attention_mask {mask.shape} for "
                             f"{len(strings)} texts; expected fixed length {self._text_length}")
        return ids, mask

    def _dataset(self, start_epoch: int, start_offset: int):
        import tensorflow as tf

        c = self.config
        graph = _Graph(seed=self.seed, process_index=self.process_index, clip_samples=self.clip_samples,
                       fade=acba.fade_samples(self.sample_rate, c.crossfade_seconds),
                       rows_per_unit=self.rows_per_unit, shuffle_buffer=c.shuffle_buffer,
                       parallel_calls=c.parallel_calls)
        labels = list(self._units)
        choice_labels = tf.constant(np.repeat(np.arange(len(labels)), [self._units[k] for k in labels]), tf.int64)
        base = tf.constant([self.seed, self.process_index], tf.int64)

        def stream(label, epoch, skip):
            plans = self._plans[label]
            if label == PLAIN:
                ds = graph.plain(plans, epoch, skip)
            elif label == TWIN:
                ds = graph.twin(plans, epoch, skip)
            else:
                ds = graph.acba(plans, epoch, skip, self._units[ACBA])
            return ds.map(_no_autograph(lambda x: {"audio": x["audio"], "text": x["text"]}))

        def epoch_units(epoch):
            skip = tf.where(tf.equal(epoch, start_epoch), tf.constant(start_offset, tf.int64), tf.constant(0, tf.int64))
            if len(labels) == 1:
                return stream(labels[0], epoch, skip)
            order = tf.random.experimental.stateless_shuffle(choice_labels, _fold(base, _CHOICE, epoch))
            done = order[:skip]
            parts = [stream(label, epoch, tf.reduce_sum(tf.cast(tf.equal(done, j), tf.int64)))
                     for j, label in enumerate(labels)]
            return tf.data.Dataset.choose_from_datasets(parts, tf.data.Dataset.from_tensor_slices(order[skip:]))

        B, u = self.batch_size, self.rows_per_unit

        def merge(x):
            return {"audio": tf.reshape(x["audio"], [B, self.clip_samples]), "text": tf.reshape(x["text"], [B])}

        def tokenize(x):
            ids, mask = tf.numpy_function(self._tokenize, [x["text"]], (tf.int32, tf.int32), stateful=False)
            shape = [B, self._text_length]
            return {"audio": x["audio"], "input_ids": tf.ensure_shape(ids, shape),
                    "attention_mask": tf.ensure_shape(mask, shape)}

        parallel = tf.data.AUTOTUNE if c.parallel_calls < 0 else c.parallel_calls
        ds = (tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(_no_autograph(epoch_units))
              .batch(B // u, drop_remainder=True).map(_no_autograph(merge))
              .map(_no_autograph(tokenize), num_parallel_calls=parallel, deterministic=True)
              .prefetch(c.prefetch_batches))
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options)

    # -- iteration and position ----------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            epoch, offset = divmod(self._start_units, self.units_per_epoch)
            self._iterator = self._dataset(epoch, offset).as_numpy_iterator()
        batch = next(self._iterator)
        self._batches += 1
        return batch

    def get_state(self) -> dict:
        """The position after the last batch returned (prefetched batches don't count)."""
        units = self._start_units + self._batches * (self.batch_size // self.rows_per_unit)
        epoch, offset = divmod(units, self.units_per_epoch)
        return {"version": STATE_VERSION, "epoch": epoch, "offset": offset, "fingerprint": dict(self._fingerprint)}

    def set_state(self, state: dict) -> None:
        """Continues from `state` (from get_state of a run with the same data and settings)."""
        if state.get("version") == 1:
            log.warning("the saved input position is from before captions came in rounds: the "
                        "rest of its epoch follows the new order, so some of that epoch's "
                        "examples may come twice and others not at all; later epochs are whole")
        elif state.get("version") != STATE_VERSION:
            raise ValueError(f"input state version {state.get('version')!r}; this pipeline reads {STATE_VERSION}")
        saved = state.get("fingerprint", {})
        differ = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
        if differ:
            raise ValueError("the saved input position belongs to different data or settings "
                             f"(saved, now): {differ}; the batches could not be reproduced")
        epoch, offset = int(state["epoch"]), int(state["offset"])
        if epoch < 0 or not 0 <= offset < self.units_per_epoch:
            raise ValueError(f"input state epoch={epoch} offset={offset} out of range "
                             f"(units per epoch: {self.units_per_epoch})")
        self._start_units = epoch * self.units_per_epoch + offset
        self._batches = 0
        self._iterator = None


def acba_stream(sources, *, data_dir: str, sample_rate: int, clip_samples: int | None,
                crossfade_seconds: float = 1.0, seed: int = 0, text_transform: str = "none",
                spacy_model: str = "en_core_web_sm"):
    """An endless tf.data stream of ACBA pairs exactly as training synthesises them (one
    host, one order per pair): {"audio": float32 [N], "text", "first_id", "second_id",
    "preposition" (index into acba.PREPOSITIONS)}. Used by `python -m data_pipeline.acba write`."""
    resolved = resolve_sources(sources, data_dir=data_dir, sample_rate=sample_rate, field="acba_sources")
    catalogs = [index_source(s) for s in resolved]
    table = _text_transform(text_transform, spacy_model, {c for cat in catalogs for clip in cat.captions for c in clip})
    plans, counts = [], _Counter()
    fade = acba.fade_samples(sample_rate, crossfade_seconds)
    for s, cat in zip(resolved, catalogs):
        plan = _plan_pool(s, cat, table, np.ones(len(cat.ids), bool), counts, fade)
        if plan.examples:
            plans.append(plan)
    total = sum(p.examples for p in plans)
    short = counts.get("pool_clips_shorter_than_two_crossfades", 0)
    if short:
        log.warning("ACBA pool: skipped %d clips shorter than two cross-fades (%.2f s)", short,
                    2 * crossfade_seconds)
    if total < 2:
        why = pool_exclusions(counts, crossfade_seconds, "--crossfade_seconds")
        raise ValueError(f"ACBA needs at least 2 clips with an eligible caption in {sources}, found {total}"
                         + (f"; {why}" if why else ""))
    log.info("ACBA pool: %d clips with an eligible caption", total)
    graph = _Graph(seed=seed, process_index=0, clip_samples=clip_samples,
                   fade=fade, rows_per_unit=1,
                   shuffle_buffer=default_config().shuffle_buffer, parallel_calls=-1)
    import tensorflow as tf

    first_row = _no_autograph(lambda x: {k: v[0] for k, v in x.items()})
    return graph.acba(plans, tf.constant(0, tf.int64), 0, None).map(first_row)
