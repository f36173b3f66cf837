"""ACBA pairs in the training input: the pool of a source and the tf.data stream of pairs.

The pool (`plan_pool`) is a source's clips with at least one eligible caption (one that
names no order), each caption as the clause it becomes inside an ACBA sentence (after the
text transform, so with NV each part is transformed and the preposition kept), and at
least two cross-fades long. `pairs` draws the pairs of an epoch: every pass over the pool
draws each clip once (so the two clips of a pair differ), the caption, preposition and
crop positions come from stateless random numbers keyed by the unit's index, and the audio
is `data_pipeline.acba.fit_pair_tf`. In order_hard batches a unit is (A then B) and
(B then A), each with its own true-order sentence. `acba_stream` is the same stream for
one host, endless, for `python -m data_pipeline.acba write`.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from data_pipeline import acba, epoch_plan, streams
from data_pipeline import sources as sources_lib

log = logging.getLogger(__name__)


def plan_pool(source: sources_lib.Source, cat: sources_lib.Catalog, table: dict[str, str],
              host: np.ndarray, counts: epoch_plan.Counter, fade: int) -> epoch_plan.SourcePlan:
    """The ACBA pool of one source: clips with at least one eligible caption, as clauses.

    Clips shorter than two cross-fades (`fade` samples each) are skipped and counted
    (`pool_clips_shorter_than_two_crossfades`): the cross-fade would cover most or all of
    such a clip, so it would not be heard on its own before or after the other, and the
    caption would state an order the audio does not have."""
    plan = epoch_plan.empty_plan(source, cat.ids)
    for i in np.flatnonzero(host):
        if cat.samples[i] == 0:
            counts.add("pool_clips_without_audio")
            continue
        if cat.samples[i] < 2 * fade:
            counts.add("pool_clips_shorter_than_two_crossfades")
            continue
        clauses, order_word = [], False
        for c in cat.captions[i]:
            if not epoch_plan.HAS_WORD.search(c):
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
    `plan_pool`), for the error that says too few clips are left; "" if none were.
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


def _pool_clips(graph: streams.Graph, plan: epoch_plan.SourcePlan):
    clauses, capitalised = streams.ragged(plan.texts), streams.ragged(plan.extra)

    def clip(i, x):
        return {"audio": x["audio"], "id": x["id"], "clause": clauses[i], "capitalised": capitalised[i]}

    return graph.clips(plan).map(streams.no_autograph(clip))


def pairs(graph: streams.Graph, plans: list[epoch_plan.SourcePlan], epoch, skip,
          units: int | None):
    """The epoch's ACBA units, built with `graph`'s seed, crop length, cross-fade and rows
    per unit (2 in order_hard batches: both orders); `units=None` makes the stream endless
    (the ACBA writer)."""
    tf = graph.tf
    key = streams.fold(graph.base, streams.ACBA, epoch)
    pool = [_pool_clips(graph, plan) for plan in plans]
    counts = [p.examples for p in plans]

    def one_pass(n):
        # Each pass draws every pool clip once, so the two clips of a pair always differ.
        pkey = streams.fold(key, streams.KEY_POOL, n)
        mixed = streams.mix(pool, counts, streams.fold(pkey, streams.KEY_MIX))
        mixed = mixed.shuffle(graph.buffer,
                              seed=streams.shuffle_seed(streams.fold(pkey, streams.KEY_SHUFFLE)),
                              reshuffle_each_iteration=False)
        return mixed.ragged_batch(2, drop_remainder=True)

    drawn = tf.data.Dataset.range(streams.MAX_EPOCHS).flat_map(streams.no_autograph(one_pass))
    if units is not None:
        drawn = drawn.take(units)
    after = acba.PREPOSITIONS.index("after")
    joiners = tf.constant([f" {p} " for p in acba.PREPOSITIONS])

    def pick(rows, r, fraction):
        count = tf.cast(rows.row_lengths()[r], tf.float64)
        return tf.cast(tf.minimum(tf.floor(fraction * count), count - 1), tf.int64)

    def sentence(c, s, first, second, prep):
        # acba.join_captions, from clauses precomputed by the same Python function.
        return tf.where(prep == after, c[second] + " after " + s[first], c[first] + joiners[prep] + s[second])

    def process(unit, x):
        u = tf.random.stateless_uniform([5], streams.fold(key, streams.KEY_UNIT, unit), dtype=tf.float64)
        j = [pick(x["clause"], r, u[r]) for r in (0, 1)]
        s = [x["clause"][r][j[r]] for r in (0, 1)]
        c = [x["capitalised"][r][j[r]] for r in (0, 1)]
        prep = tf.cast(tf.minimum(tf.floor(u[2] * len(acba.PREPOSITIONS)), len(acba.PREPOSITIONS) - 1), tf.int32)
        clips = [x["audio"][r] for r in (0, 1)]
        orders = [(0, 1), (1, 0)][: graph.rows]
        audio = [acba.fit_pair_tf(clips[a], clips[b], clip_samples=graph.clip_samples, fade=graph.fade,
                                  first_fraction=u[3 + a], second_fraction=u[3 + b]) for a, b in orders]
        return {"audio": tf.stack(audio), "text": tf.stack([sentence(c, s, a, b, prep) for a, b in orders]),
                "first_id": tf.stack([x["id"][a] for a, _ in orders]),
                "second_id": tf.stack([x["id"][b] for _, b in orders]),
                "preposition": tf.fill([len(orders)], prep)}

    return graph.processed(drawn, skip, process)


def acba_stream(sources, *, data_dir: str, sample_rate: int, clip_samples: int | None,
                crossfade_seconds: float = 1.0, seed: int = 0, text_transform: str = "none",
                spacy_model: str = "en_core_web_sm"):
    """An endless tf.data stream of ACBA pairs exactly as training synthesises them (one
    host, one order per pair): {"audio": float32 [N], "text", "first_id", "second_id",
    "preposition" (index into acba.PREPOSITIONS)}. Used by `python -m data_pipeline.acba write`."""
    resolved = sources_lib.resolve_sources(sources, data_dir=data_dir, sample_rate=sample_rate,
                                           field="acba_sources")
    catalogs = [sources_lib.index_source(s) for s in resolved]
    table = sources_lib.text_table(text_transform, spacy_model,
                                   {c for cat in catalogs for clip in cat.captions for c in clip})
    plans, counts = [], epoch_plan.Counter()
    fade = acba.fade_samples(sample_rate, crossfade_seconds)
    for s, cat in zip(resolved, catalogs):
        plan = plan_pool(s, cat, table, np.ones(len(cat.ids), bool), counts, fade)
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
    graph = streams.Graph(seed=seed, process_index=0, clip_samples=clip_samples, fade=fade,
                          rows_per_unit=1, shuffle_buffer=streams.DEFAULT_SHUFFLE_BUFFER,
                          parallel_calls=-1)
    import tensorflow as tf

    first_row = streams.no_autograph(lambda x: {k: v[0] for k, v in x.items()})
    return pairs(graph, plans, tf.constant(0, tf.int64), 0, None).map(first_row)
