"""The per-host plan: which clips and which texts of each source a host trains on.

Clips are dealt to hosts by position (clip i to host i modulo process_count). A plain
source clip gives one example per caption; a clip with a reversed-order twin (the
synthetic corpus) goes to the twin stream, its twin's captions aligned with its own.
Captions without words, or empty after the text transform, and clips without samples are
skipped and counted. The ACBA pool is planned in data_pipeline.acba.pairs.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from data_pipeline import sources

# A caption holds a word: not empty, nor punctuation alone (".").
HAS_WORD = re.compile(r"\w")


@dataclasses.dataclass
class SourcePlan:
    """What one stream takes of one source on this host."""

    source: sources.Source
    ids: list[str]
    keep: np.ndarray  # bool [num_clips]: on this host and in this stream
    texts: list[list[str]]  # per clip (empty where not kept)
    extra: list[list[str]]  # twin texts aligned with texts, or capitalised ACBA clauses
    examples: int  # rows of text over kept clips (ACBA: kept clips)


def host_mask(n: int, process_index: int, process_count: int) -> np.ndarray:
    """The clips (of `n`, by position) that this host trains on."""
    return np.arange(n) % process_count == process_index


class Counter(dict):
    """Counts by reason (skipped captions, excluded clips), reported in the input's stats."""

    def add(self, key, n=1):
        self[key] = self.get(key, 0) + n


def empty_plan(source: sources.Source, ids: list[str]) -> SourcePlan:
    """A plan that keeps none of the source's clips yet."""
    n = len(ids)
    return SourcePlan(source, ids, np.zeros(n, bool), [[] for _ in range(n)],
                      [[] for _ in range(n)], 0)


def plan_captions(source: sources.Source, cat: sources.Catalog, table: dict[str, str],
                  host: np.ndarray, counts: Counter) -> tuple[SourcePlan, SourcePlan]:
    """(plain plan, twin plan) of one main source; `table` maps a caption to its text."""
    n = len(cat.ids)
    plain, twin = empty_plan(source, cat.ids), empty_plan(source, cat.ids)
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
            if not HAS_WORD.search(c):  # empty, or punctuation alone (".")
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
