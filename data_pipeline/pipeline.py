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
  captions are far apart before the shuffle buffer (see `streams.Graph._examples`);
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

The parts, in the order they run: data_pipeline.sources (sources, caption index, text
transform), data_pipeline.epoch_plan (a host's clips and texts per stream),
data_pipeline.acba.pairs (the ACBA pool and its pairs), data_pipeline.streams (the tf.data
streams of one epoch); this module checks the settings, counts the units, interleaves the
streams, batches, tokenises and keeps the position.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from data_pipeline import acba, epoch_plan, streams
from data_pipeline import sources as sources_lib
from data_pipeline.acba import pairs
from data_pipeline.streams import ACBA, PLAIN, TWIN

log = logging.getLogger(__name__)

PRETRAINING_MIXTURE = "audiocaps:train+clotho:development+macs:train+fsd50k:train"
BATCHES = ("random", "order_hard")
TEXT_TRANSFORMS = ("none", "nv")
# 2: a clip's captions come in rounds. A version-1 position (captions adjacent) is still
# taken, with a warning: its epoch goes on in the new order.
STATE_VERSION = 2


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
    c.shuffle_buffer = streams.DEFAULT_SHUFFLE_BUFFER  # examples per stream
    c.prefetch_batches = 2
    c.parallel_calls = -1  # per map; -1 = tf.data.AUTOTUNE
    c.index_cache = True  # cache each prepared split's caption index beside it
    return c


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

        main = sources_lib.resolve_sources(config.sources, data_dir=config.data_dir,
                                           sample_rate=sample_rate, clip_samples=clip_samples)
        pool = []
        if config.acba_fraction > 0:
            # A pool source that is also a main source (AudioCaps train) is indexed once.
            for s in sources_lib.resolve_sources(config.acba_sources, data_dir=config.data_dir,
                                                 sample_rate=sample_rate, field="acba_sources"):
                same = [m for m in main if m.dataset is s.dataset or (m.from_spec and s.from_spec and m.name == s.name)]
                pool.append(same[0] if same else s)
        catalogs: dict[int, sources_lib.Catalog] = {}
        for s in main + pool:
            if id(s) not in catalogs:
                catalogs[id(s)] = sources_lib.index_source(s, use_cache=config.index_cache)
        sentences = {c for cat in catalogs.values() for clip in cat.captions + cat.twin_captions for c in clip}
        table = sources_lib.text_table(config.text_transform, config.spacy_model, sentences)

        self.stats: dict[str, Any] = {}
        self._plans = {PLAIN: [], TWIN: [], ACBA: []}
        for s in main:
            counts = epoch_plan.Counter()
            cat = catalogs[id(s)]
            host = epoch_plan.host_mask(len(cat.ids), process_index, process_count)
            plain, twin = epoch_plan.plan_captions(s, cat, table, host, counts)
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
            counts = epoch_plan.Counter()
            cat = catalogs[id(s)]
            host = epoch_plan.host_mask(len(cat.ids), process_index, process_count)
            plan = pairs.plan_pool(s, cat, table, host, counts,
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
        self.stats["units_per_epoch"] = {streams.STREAM_NAMES[k]: v for k, v in self._units.items()}
        log.info("one epoch on host %d: %d rows in units of %d (%s)", process_index, self.examples_per_epoch,
                 self.rows_per_unit, ", ".join(f"{streams.STREAM_NAMES[k]} {v}" for k, v in self._units.items()))
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
            excluded = epoch_plan.Counter()
            for key, stats in self.stats.items():
                if key.startswith("acba_pool/"):
                    for reason, n in stats.items():
                        excluded.add(reason, n)
            why = pairs.pool_exclusions(excluded, self.config.crossfade_seconds)
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
        graph = streams.Graph(seed=self.seed, process_index=self.process_index,
                              clip_samples=self.clip_samples,
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
                ds = pairs.pairs(graph, plans, epoch, skip, self._units[ACBA])
            return ds.map(streams.no_autograph(lambda x: {"audio": x["audio"], "text": x["text"]}))

        def epoch_units(epoch):
            skip = tf.where(tf.equal(epoch, start_epoch), tf.constant(start_offset, tf.int64), tf.constant(0, tf.int64))
            if len(labels) == 1:
                return stream(labels[0], epoch, skip)
            order = tf.random.experimental.stateless_shuffle(
                choice_labels, streams.fold(base, streams.KEY_CHOICE, epoch))
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
        ds = (tf.data.Dataset.range(start_epoch, streams.MAX_EPOCHS).flat_map(streams.no_autograph(epoch_units))
              .batch(B // u, drop_remainder=True).map(streams.no_autograph(merge))
              .map(streams.no_autograph(tokenize), num_parallel_calls=parallel, deterministic=True)
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
