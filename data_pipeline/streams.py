"""The tf.data streams of one epoch, built from a host's plan (data_pipeline.epoch_plan).

Everything random is a stateless function of (seed, process, stream, epoch, unit): the
interleaving of sources (`mix`), the seeded shuffle buffers, the crops and twin orders.
`Graph` builds the plain and twin streams; the ACBA stream (data_pipeline.acba.pairs)
uses the same pieces. Each stream yields units of `rows_per_unit` rows, already cropped
or padded to `clip_samples` and converted to float32.
"""

from __future__ import annotations

from data_pipeline import acba, epoch_plan

# Stream labels (also the tags folded into random keys, so streams never share numbers).
PLAIN, TWIN, ACBA = 0, 1, 2
STREAM_NAMES = ("plain", "twin", "acba")
# Tags of the random keys drawn inside a stream.
KEY_MIX, KEY_SHUFFLE, KEY_UNIT, KEY_CHOICE, KEY_POOL = 10, 11, 12, 13, 14
MAX_EPOCHS = 1 << 40
DEFAULT_SHUFFLE_BUFFER = 2048  # examples per stream


def no_autograph(fn):
    # The graph functions here have no tensor-dependent Python control flow; skipping
    # AutoGraph's source conversion halves the time to build the pipeline.
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


def fold(key, *data):
    """A stateless random key derived from `key` and the integers `data`, in order."""
    import tensorflow as tf

    for d in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64))
    return key


def shuffle_seed(key):
    """The int64 seed of a tf.data shuffle, drawn from a stateless key."""
    import tensorflow as tf

    return tf.random.stateless_uniform([], key, minval=0, maxval=2**31 - 1, dtype=tf.int64)


def to_float(audio):
    # After cropping, so that only the samples kept are converted.
    import tensorflow as tf

    if audio.dtype == tf.int16:
        return tf.cast(audio, tf.float32) / 32768.0
    return tf.cast(audio, tf.float32)


def crop_or_pad(audio, clip_samples: int, fraction):
    """Uniform random crop of a longer clip; zero-padding at the end of a shorter one."""
    import tensorflow as tf

    n = tf.shape(audio, out_type=tf.int64)[0]
    start = acba.crop_offset_tf(n, tf.minimum(n, clip_samples), fraction)
    window = audio[start:start + clip_samples]
    window = tf.pad(window, [[0, clip_samples - tf.shape(window, out_type=tf.int64)[0]]])
    return tf.ensure_shape(window, [clip_samples])


def ragged(rows: list[list[str]]):
    """Texts per clip as a tf.RaggedTensor, indexed by the clip's position."""
    import tensorflow as tf

    flat = [t for row in rows for t in row]
    return tf.RaggedTensor.from_row_lengths(tf.constant(flat, tf.string, shape=[len(flat)]),
                                            tf.constant([len(r) for r in rows], tf.int64), validate=False)


def mix(datasets: list, counts: list[int], key):
    """Interleaves datasets by a stateless permutation of their exact element counts."""
    import tensorflow as tf

    if len(datasets) == 1:
        return datasets[0]
    labels = tf.repeat(tf.range(len(counts), dtype=tf.int64), counts)
    order = tf.random.experimental.stateless_shuffle(labels, key)
    return tf.data.Dataset.choose_from_datasets(datasets, tf.data.Dataset.from_tensor_slices(order))


class Graph:
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

    def clips(self, plan: epoch_plan.SourcePlan):
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

        return plan.source.dataset.enumerate().filter(no_autograph(lambda i, x: keep[i])).map(no_autograph(checked))

    def _examples(self, plan: epoch_plan.SourcePlan, twin: bool):
        """One example per (clip, caption), in rounds: round r is caption r of every clip
        that has more than r captions, in stored order.

        Not a clip's captions one after another: the shuffle buffer mixes only
        `shuffle_buffer` neighbouring examples, so adjacent captions of one clip (5 in
        Clotho, 2-5 in MACS) would often meet in a batch, where InfoNCE takes the second as
        a negative of the first's audio (docs/data_pipeline.md has the count, from
        `python -m data_pipeline.bench --caption_spread`). A source is read once per round."""
        tf = self.tf
        texts, extra = ragged(plan.texts), ragged(plan.extra)
        counts = tf.constant([len(t) for t in plan.texts], tf.int64)

        def round_r(r):
            def has(i, x):
                return counts[i] > r

            def example(i, x):
                row = {"audio": x["audio"], "text": texts[i][r]}
                if twin:
                    row.update(twin_audio=x["twin_audio"], twin_text=extra[i][r])
                return row

            return self.clips(plan).filter(no_autograph(has)).map(no_autograph(example))

        rounds = max((len(t) for t in plan.texts), default=0)
        examples = round_r(0)
        for r in range(1, rounds):
            examples = examples.concatenate(round_r(r))
        return examples

    def processed(self, units, skip, process):
        # The skip comes before the map: a resumed run does not crop, fade or convert the
        # units it has already trained on.
        return units.enumerate().skip(skip).map(no_autograph(process), num_parallel_calls=self.parallel,
                                                deterministic=True)

    def _shuffled(self, plans: list[epoch_plan.SourcePlan], twin: bool, key):
        mixed = mix([self._examples(p, twin) for p in plans], [p.examples for p in plans], fold(key, KEY_MIX))
        return mixed.shuffle(self.buffer, seed=shuffle_seed(fold(key, KEY_SHUFFLE)), reshuffle_each_iteration=False)

    def plain(self, plans, epoch, skip):
        tf = self.tf
        key = fold(self.base, PLAIN, epoch)
        units = self._shuffled(plans, False, key)
        if self.rows == 2:
            units = units.ragged_batch(2, drop_remainder=True)

        def process(unit, x):
            u = tf.random.stateless_uniform([2], fold(key, KEY_UNIT, unit), dtype=tf.float64)
            if self.rows == 1:
                audio = to_float(crop_or_pad(x["audio"], self.clip_samples, u[0]))[tf.newaxis]
                return {"audio": audio, "text": x["text"][tf.newaxis]}
            audio = tf.stack([to_float(crop_or_pad(x["audio"][r], self.clip_samples, u[r])) for r in (0, 1)])
            return {"audio": audio, "text": x["text"]}

        return self.processed(units, skip, process)

    def twin(self, plans, epoch, skip):
        tf = self.tf
        key = fold(self.base, TWIN, epoch)

        def process(unit, x):
            u = tf.random.stateless_uniform([2], fold(key, KEY_UNIT, unit), dtype=tf.float64)
            # One crop position for both orders: twins keep the same timing.
            a = to_float(crop_or_pad(x["audio"], self.clip_samples, u[0]))
            b = to_float(crop_or_pad(x["twin_audio"], self.clip_samples, u[0]))
            if self.rows == 2:
                return {"audio": tf.stack([a, b]), "text": tf.stack([x["text"], x["twin_text"]])}
            use_twin = u[1] < 0.5
            return {"audio": tf.where(use_twin, b, a)[tf.newaxis],
                    "text": tf.where(use_twin, x["twin_text"], x["text"])[tf.newaxis]}

        return self.processed(self._shuffled(plans, True, key), skip, process)
