"""The language probes (Sec. 3): as/then (Table 3), PTe (Table 4, Fig. 2), BAT (Fig. 3), and
the order controls that the paper lacks (twin test, order-blind BAT).

Two corpora (setting `corpus`; "auto" picks by the model's training config):

* "paper": the AudioCaps, Clotho and Clotho 2022 test sets (needs --data_dir).
  - as/then: sentences with exactly one "as" (and no "such as", "as well", ...) or one
    "then"; queried as they are and with the word exchanged (atjax.text_edits.swap_as_then);
    the retrieval set is the clips of all sentences with that word, pooled over the three
    sets; R@10. Keys as_r10, as_then_r10 (r/As/Then), then_r10, then_as_r10.
  - PTe: the sentences holding before/after/then/followed by (counts per word and their
    share of all test sentences: pte_<word>_count, pte_<word>_share, Table 4); those with
    one such word are queried as they are and with their clauses swapped, each against all
    clips of its own test set; R@1. Keys swap_r1_original, swap_r1_swapped, swap_r1_delta.
  - BAT: an equal number of "before" and "after" sentences (seeded draw; `bat_size` caps
    each half, the paper used 88), the original vs the before<->after sentence against the
    sentence's clip. Key bat.
  - Tr (Table 4's bottom row): the same counts over the pre-training captions
    (`pretraining_sources`, by default the model's training sources): tr_<word>_count,
    tr_<word>_share, tr_sentences.
  - ACBA order controls (`acba_pairs` > 0): pairs of AudioCaps test clips joined as in ACBA
    (data_pipeline.acba: 1 s cross-fade, captions joined by a random preposition), each with
    its reversed-order twin: acba_twin, acba_bat, acba_bat_order_blind. Asked for but
    impossible (fewer than 2 clips of `acba_source` with an eligible caption and two
    cross-fades long) is an error naming why the clips were excluded, raised before any
    embedding.
  Test sets without a sentence holding "as", "then" or a PTe preposition leave the
  as/then, PTe and BAT figures out (a warning says why); the ACBA controls still run.
* "synthetic": the held-out split of the built-in corpus (data_pipeline.synthetic_events),
  generated on demand with the corpus settings of the model's training config. A clip
  counts as a correct retrieval when it holds the same events as the query's clip (same
  classes, in the same order for pairs), since the held-out split repeats contents.
  Keys single_r1, pair_r1, mix_r1, swap_r1_original, swap_r1_swapped, swap_r1_delta, bat,
  bat_order_blind, twin, twin_audio_cosine (a pair clip's audio with its reversed twin's),
  unrelated_audio_cosine (with a pair clip that holds neither of its sounds: the
  former's scale), swap_text_cosine (a pair caption's text with its clause-swapped
  form's: the text side's order-blindness, as twin_audio_cosine is the audio side's) and
  unrelated_text_cosine (with the caption of a pair that holds neither sound: its scale).
  `<key>_chance` is what random scores give: the share of relevant clips per query for
  the R@1 keys, 0.5 for twin and BAT.

Every probe figure comes with `_ci_low`/`_ci_high` (percentile bootstrap over its items,
seeded, `resamples` draws) and `_count`. Probe math lives in atjax.probes.order.
"""

from __future__ import annotations

import logging
from typing import Sequence

import ml_collections
import numpy as np

from atjax import metrics
from atjax import text_edits as text_lib
from atjax.evaluate import data as data_lib
from atjax.evaluate import embed
from atjax.evaluate import results as results_lib
from atjax.evaluate import retrieval
from atjax.probes import order

log = logging.getLogger(__name__)

CORPORA = ("auto", "paper", "synthetic")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.corpus = "auto"
    c.datasets = retrieval.DEFAULT_DATASETS
    c.resamples = 1000
    c.seed = 0
    c.level = 0.95
    c.tie_tolerance = order.DEFAULT_TIE_TOLERANCE
    c.bat_size = 0                  # sentences per preposition; 0 = as many as balance allows
    c.acba_pairs = 200              # ACBA order controls from AudioCaps test (0 = off)
    c.acba_source = "audiocaps:test"
    c.acba_crossfade_seconds = 1.0
    c.acba_clip_seconds = 0.0       # pair length; 0 = the model's clip_seconds (else 10)
    # Table 4's Tr row: the PTe prepositions counted in the pre-training captions, read
    # through the training pipeline's caption index from --data_dir. "auto": the model's
    # training sources (config.data.sources; skipped with a warning if not readable);
    # a "name:split+..." spec; "" = off.
    c.pretraining_sources = "auto"
    c.synthetic_heldout_size = 0    # 0 = the corpus settings' heldout_size
    c.batch_size = 32
    c.pad_seconds = 0.0             # > 0: pad clips to multiples of it (see evaluate.embed)
    c.text_batch_size = 256
    c.sample_rate = 0               # rate the data was prepared at; 0 = the model's rate
    return c


def trained_on_synthetic(embedder) -> bool:
    sources = results_lib.config_value(getattr(embedder, "config", None), "data.sources")
    return bool(sources) and "synthetic_events" in str(sources)


class _Stats:
    """Collects probe figures with their bootstrap intervals."""

    def __init__(self, config):
        self.config = config
        self.out: dict[str, float] = {}

    def add(self, name: str, scores, groups=None) -> None:
        """`groups`: one label per item where items come in correlated groups (a pair and
        its twin); the interval then resamples whole groups."""
        scores = np.asarray(scores, np.float64)
        if scores.size == 0:
            log.warning("probe %s has no items; left out", name)
            self.out[f"{name}_count"] = 0
            return
        self.out.update(order.summarize(name, scores, groups=groups,
                                        resamples=self.config.resamples,
                                        seed=self.config.seed, level=self.config.level))

    def add_difference(self, name: str, first, second, groups=None) -> None:
        if len(first) == 0:
            return
        self.out.update(order.summarize_difference(
            name, first, second, groups=groups, resamples=self.config.resamples,
            seed=self.config.seed, level=self.config.level))


def _hits(text: np.ndarray, audio: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    return metrics.hits_at_k(text @ audio.T, relevant, k)


def _chance_r1(relevant: np.ndarray) -> float:
    """R@1 of a random ranking: the mean share of relevant clips per query."""
    return float(np.mean(relevant.sum(axis=1) / relevant.shape[1]))


def _split_rows(array: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Consecutive row blocks of the given sizes."""
    bounds = np.cumsum([0, *sizes])
    return [array[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def _same(keys: Sequence, rows: Sequence[int]) -> np.ndarray:
    """`[len(rows), len(keys)]`: whether item j holds what item rows[i] holds."""
    codes = {k: n for n, k in enumerate(dict.fromkeys(keys))}
    ids = np.array([codes[k] for k in keys])
    return ids[np.asarray(rows, np.int64)][:, None] == ids[None, :]


def _balanced_bat(sentences: Sequence[str], config) -> tuple[list[int], list[str]]:
    """Indices of a balanced before/after set and their before<->after versions."""
    candidates, swapped, groups = [], [], []
    for i, s in enumerate(sentences):
        manipulated = text_lib.swap_before_after(s)
        if manipulated is None:
            continue
        candidates.append(i)
        swapped.append(manipulated)
        groups.append(text_lib.prepositions_in(s)[0])
    if len(set(groups)) < 2:
        log.warning("BAT needs both 'before' and 'after' sentences; found %s", sorted(set(groups)))
        return [], []
    chosen = order.balanced_indices(groups, seed=config.seed, size=config.bat_size or None)
    return [candidates[j] for j in chosen], [swapped[j] for j in chosen]


# ------------------------------------------------------------------------------------------
# The built-in synthetic corpus


def corpus_settings(embedder, config) -> dict:
    """The corpus the model was trained on: the training pipeline reads `synthetic_events`
    through data_pipeline.datasets.builder, i.e. the corpus defaults at the model's rate."""
    settings = {"sample_rate": int(embedder.sample_rate)}
    if config.synthetic_heldout_size:
        settings["heldout_size"] = int(config.synthetic_heldout_size)
    return settings


def content_key(example) -> tuple:
    """What a clip holds: its event classes, in time order (a mix's as a sorted set)."""
    names = [e[0] for e in sorted(example.events, key=lambda e: e[1])]
    if example.kind == "mix":
        names = sorted(names)
    return (example.kind, tuple(names))


def run_synthetic(embedder, config, heldout=None) -> dict[str, float]:
    from data_pipeline.synthetic_events import corpus  # numpy only

    settings = corpus_settings(embedder, config)
    rate = corpus.CorpusConfig.from_mapping(settings).sample_rate
    examples = (heldout or corpus.heldout)(settings)
    if not examples:
        raise data_lib.TaskInputError("the synthetic held-out split is empty")
    ids = {e.id: i for i, e in enumerate(examples)}
    audio = embed.embed_clips(embedder, (e.audio for e in examples), sample_rate=rate,
                              batch_size=config.batch_size, total=len(examples),
                              desc="synthetic heldout audio")
    captions = [e.caption for e in examples]
    kinds = np.array([e.kind for e in examples])
    keys = [content_key(e) for e in examples]
    any_order = [(k[0], tuple(sorted(k[1]))) for k in keys]

    pairs = [int(i) for i in np.flatnonzero(kinds == "pair")]
    # The corpus's captions are generated from its own phrases and hold no proper nouns.
    clause = {i: text_lib.swap_clauses(captions[i], proper_nouns=False) for i in pairs}
    swappable = [i for i in pairs if clause[i] is not None]
    bat_items, bat_swapped = _balanced_bat([captions[i] for i in pairs], config)
    bat_items = [pairs[j] for j in bat_items]
    twinned = [i for i in pairs if examples[i].twin in ids]
    if len(twinned) < len(pairs):
        log.warning("%d held-out pairs have no twin in the split", len(pairs) - len(twinned))
    # A pair and its reversed twin hold the same two sounds: one group for the intervals.
    base = {i: min(i, ids.get(examples[i].twin, i)) for i in pairs}

    def groups(rows):
        return [base[i] for i in rows]

    # One text pass for every sentence the probes need.
    sentences = captions + [clause[i] for i in swappable] + bat_swapped
    text = embed.embed_texts(embedder, sentences, batch_size=config.text_batch_size,
                             desc="synthetic heldout text")
    caption_text, swapped_text, bat_text = _split_rows(
        text, [len(captions), len(swappable), len(bat_swapped)])

    stats = _Stats(config)
    for kind, name in (("single", "single_r1"), ("pair", "pair_r1"), ("mix", "mix_r1")):
        rows = [int(i) for i in np.flatnonzero(kinds == kind)]
        if rows:
            relevant = _same(keys, rows)
            stats.add(name, _hits(caption_text[rows], audio, relevant, 1),
                      groups(rows) if kind == "pair" else None)
            stats.out[f"{name}_chance"] = _chance_r1(relevant)
    if pairs:
        stats.add("pair_r1_any_order",
                  _hits(caption_text[pairs], audio, _same(any_order, pairs), 1), groups(pairs))
    if swappable:
        rel = _same(keys, swappable)
        stats.out["swap_r1_original_chance"] = stats.out["swap_r1_swapped_chance"] = \
            _chance_r1(rel)
        original = _hits(caption_text[swappable], audio, rel, 1)
        swapped = _hits(swapped_text, audio, rel, 1)
        stats.add("swap_r1_original", original, groups(swappable))
        stats.add("swap_r1_swapped", swapped, groups(swappable))
        stats.add_difference("swap_r1_delta", original, swapped, groups(swappable))
        # The text side alone: how alike a pair caption and its clause-swapped form embed
        # (1 when the text embedding ignores the order the caption states).
        stats.add("swap_text_cosine", order.cosine_rows(caption_text[swappable], swapped_text),
                  groups(swappable))
    tol = dict(tie_tolerance=config.tie_tolerance)
    if bat_items:
        twin_of = [ids.get(examples[i].twin) for i in bat_items]
        stats.add("bat", order.bat_scores(audio[bat_items], caption_text[bat_items],
                                          bat_text, **tol), groups(bat_items))
        if all(t is not None for t in twin_of):
            stats.add("bat_order_blind", order.order_blind_bat_scores(
                audio[bat_items], audio[twin_of], caption_text[bat_items], bat_text, **tol),
                groups(bat_items))
    if twinned:
        twin_rows = [ids[examples[i].twin] for i in twinned]
        stats.add("twin", order.twin_scores(caption_text[twinned], audio[twinned],
                                            audio[twin_rows], **tol), groups(twinned))
        # The audio side alone, once per pair: how alike a clip and its twin embed.
        first = [i for i in twinned if base[i] == i]
        stats.add("twin_audio_cosine", order.twin_audio_cosines(
            audio[first], audio[[ids[examples[i].twin] for i in first]]))
        # Its scale: the same cosine with a pair clip that holds neither of the two sounds.
        unrelated = _unrelated_pairs(first, [set(keys[i][1]) for i in first])
        if unrelated:
            stats.add("unrelated_audio_cosine", order.cosine_rows(
                audio[[i for i, _ in unrelated]], audio[[j for _, j in unrelated]]))
            # The text side's scale: a pair caption against one naming neither sound.
            stats.add("unrelated_text_cosine", order.cosine_rows(
                caption_text[[i for i, _ in unrelated]],
                caption_text[[j for _, j in unrelated]]))
    # A model whose scores are random gets these on average.
    for name in ("bat", "bat_order_blind", "twin"):
        if name in stats.out:
            stats.out[f"{name}_chance"] = 0.5
    stats.out["clips"] = len(examples)
    return stats.out


def _unrelated_pairs(rows: list[int], events: list[set]) -> list[tuple[int, int]]:
    """(row, partner) for each row that has one: the next row, cyclically, whose events are
    disjoint from its own (deterministic, so reruns compare)."""
    out = []
    for k, row in enumerate(rows):
        for step in range(1, len(rows)):
            other = (k + step) % len(rows)
            if not events[k] & events[other]:
                out.append((row, rows[other]))
                break
    return out


# ------------------------------------------------------------------------------------------
# The paper's test sets


def _acba_pool(config, *, read, data_dir: str, rate: int) -> dict[str, list[str]]:
    """The clips the ACBA order controls draw their pairs from: {clip id: its eligible
    captions}, for clips at least two cross-fades long (as in training's pool: the
    cross-fade would cover most of a shorter clip, and the caption would state an order
    the audio does not have). Fewer than two such clips is an error that counts the
    excluded clips by reason, since the controls were asked for (`acba_pairs` > 0)."""
    try:
        from data_pipeline import acba
    except ImportError as e:
        raise ImportError("the ACBA order controls need data_pipeline.acba; set "
                          "acba_pairs=0 to skip them") from e

    (name, split), = data_lib.parse_sources(config.acba_source)
    fade = acba.fade_samples(rate, config.acba_crossfade_seconds)
    eligible: dict[str, list[str]] = {}
    short = order_word = empty = 0
    for example in read(name, split, data_dir, rate):
        texts = [c.strip() for c in example.get("captions", []) if c.strip()]
        caps = [c for c in texts if acba.eligible(c)]
        if len(example["audio"]) < 2 * fade:
            short += 1
        elif caps:
            eligible[example["id"]] = caps
        elif texts:
            order_word += 1
        else:
            empty += 1
    if short:
        log.warning("ACBA controls: skipped %d clips of %s shorter than two cross-fades (%.2f s)",
                    short, config.acba_source, 2 * config.acba_crossfade_seconds)
    if len(eligible) < 2:
        reasons = [f"{n} {why}" for n, why in (
            (short, f"shorter than two cross-fades ({2 * config.acba_crossfade_seconds:.2f} s; "
                    "setting acba_crossfade_seconds)"),
            (order_word, f"whose every caption names an order "
                         f"({'/'.join(acba.PREPOSITIONS)})"),
            (empty, "without captions")) if n]
        raise data_lib.TaskInputError(
            f"the ACBA order controls (acba_pairs={config.acba_pairs}) need at least 2 clips "
            f"with an eligible caption in {config.acba_source}, found {len(eligible)}"
            + (f"; excluded: {'; '.join(reasons)}" if reasons else "")
            + "; lower acba_crossfade_seconds, change acba_source, or set acba_pairs=0 to "
              "skip the controls")
    return eligible


def _acba_controls(embedder, config, *, read, data_dir: str, rate: int, stats: _Stats,
                   eligible: dict[str, list[str]]) -> None:
    """Twin test and BAT with its order-blind control on ACBA pairs of AudioCaps test clips
    (`eligible`: the pool of `_acba_pool`).

    Pair p is made as in training (data_pipeline.acba): two clips with eligible captions,
    a preposition drawn uniformly, the sentence stating the true order, the audio cross-faded
    and zero-padded to the model's clip length. Both parts are centre crops of one length P
    (the clip length plus the fade, halved, or the shorter clip), so that the reversed twin
    is exactly the same two parts in the other order.
    """
    from data_pipeline import acba

    (name, split), = data_lib.parse_sources(config.acba_source)
    clip_seconds = (config.acba_clip_seconds
                    or float(results_lib.config_value(getattr(embedder, "config", None),
                                                      "model.clip_seconds", 10.0)))
    clip_samples = int(round(clip_seconds * rate))
    fade = acba.fade_samples(rate, config.acba_crossfade_seconds)
    clip_ids = sorted(eligible)
    rng = np.random.default_rng(config.seed)
    plan = []
    for _ in range(config.acba_pairs):
        a, b = rng.choice(len(clip_ids), size=2, replace=False)
        a, b = clip_ids[a], clip_ids[b]
        plan.append((a, b, eligible[a][rng.integers(len(eligible[a]))],
                     eligible[b][rng.integers(len(eligible[b]))],
                     acba.PREPOSITIONS[rng.integers(len(acba.PREPOSITIONS))]))
    wanted = {x for a, b, *_ in plan for x in (a, b)}
    clips = {example["id"]: data_lib.to_float(example["audio"])
             for example in read(name, split, data_dir, rate) if example["id"] in wanted}

    def centre(x, n):
        start = (x.size - n) // 2
        return x[start:start + n]

    def pair_audio():
        for a, b, *_ in plan:
            x, y = clips[a], clips[b]
            n = min(x.size, y.size, (clip_samples + fade) // 2)
            f = min(fade, n)
            x, y = centre(x, n), centre(y, n)
            for first, second in ((x, y), (y, x)):
                out = acba.crossfade(first, second, rate, seconds=f / rate)
                yield np.pad(out, (0, max(0, clip_samples - out.size)))

    audio = embed.embed_clips(embedder, pair_audio(), sample_rate=rate,
                              batch_size=config.batch_size, total=2 * len(plan),
                              desc="ACBA pairs audio")
    # Rows 2p and 2p+1 are pair p in its order and reversed; each has its own caption.
    captions = []
    for _, _, cap_a, cap_b, prep in plan:
        captions += [acba.join_captions(cap_a, cap_b, prep),
                     acba.join_captions(cap_b, cap_a, prep)]
    twin_row = np.arange(len(captions)) ^ 1
    pair_of = np.arange(len(captions)) // 2  # a pair and its twin: one bootstrap group
    bat_rows, bat_swapped = _balanced_bat(captions, config)
    text = embed.embed_texts(embedder, captions + bat_swapped,
                             batch_size=config.text_batch_size, desc="ACBA pairs text")
    caption_text, bat_text = _split_rows(text, [len(captions), len(bat_swapped)])
    tol = dict(tie_tolerance=config.tie_tolerance)
    stats.add("acba_twin", order.twin_scores(caption_text, audio, audio[twin_row], **tol),
              pair_of)
    stats.add("acba_twin_audio_cosine", order.twin_audio_cosines(audio[0::2], audio[1::2]))
    if bat_rows:
        stats.add("acba_bat", order.bat_scores(audio[bat_rows], caption_text[bat_rows],
                                               bat_text, **tol), pair_of[bat_rows])
        stats.add("acba_bat_order_blind", order.order_blind_bat_scores(
            audio[bat_rows], audio[twin_row[bat_rows]], caption_text[bat_rows], bat_text,
            **tol), pair_of[bat_rows])


def preposition_counts(sentences: Sequence[str], prefix: str) -> dict[str, float]:
    """Table 4's figures: sentences holding each PTe preposition, and their share."""
    found = [text_lib.prepositions_in(s) for s in sentences]
    out: dict[str, float] = {}
    for prep in text_lib.PTE_PREPOSITIONS:
        count = sum(prep in f for f in found)
        key = prep.replace(" ", "_")
        out[f"{prefix}_{key}_count"] = count
        out[f"{prefix}_{key}_share"] = count / len(sentences)
    out[f"{prefix}_count"] = sum(bool(f) for f in found)
    return out


def pretraining_counts(embedder, config, *, data_dir: str, rate: int) -> dict[str, float]:
    """Table 4's Tr row from the pre-training captions (setting `pretraining_sources`)."""
    sources = config.pretraining_sources
    auto = sources == "auto"
    if auto:
        sources = results_lib.config_value(getattr(embedder, "config", None), "data.sources")
        if not isinstance(sources, str) or not sources:
            log.info("Table 4's Tr row: the model's config names no training sources; skipped")
            return {}
    if not sources:
        return {}
    try:
        from data_pipeline import sources as sources_lib

        catalogs = [sources_lib.index_source(s) for s in sources_lib.resolve_sources(
            sources, data_dir=data_dir, sample_rate=rate, field="sources")]
    except (ImportError, OSError, ValueError) as e:
        if not auto:
            raise data_lib.TaskInputError(f"pretraining_sources={sources!r}: {e}") from e
        log.warning("Table 4's Tr row is not computed: the model's training sources %s cannot "
                    "be read from %s (%s); set pretraining_sources to a readable spec, or "
                    "\"\" to skip it", sources, data_dir, e)
        return {}
    sentences = [c.strip() for cat in catalogs for clip in cat.captions for c in clip
                 if c.strip()]
    if not sentences:
        raise data_lib.TaskInputError(f"pretraining_sources {sources!r} hold no captions")
    return {"tr_sentences": len(sentences), **preposition_counts(sentences, "tr")}


def run_paper(embedder, config, *, read, data_dir: str) -> dict[str, float]:
    rate = retrieval.data_rate(embedder, config)
    # The ACBA pool first: a pool too small for the controls fails before the long part.
    acba_pool = (_acba_pool(config, read=read, data_dir=data_dir, rate=rate)
                 if config.acba_pairs else None)
    sets = []
    for name, split in data_lib.parse_sources(config.datasets):
        caption_set, _ = retrieval.embed_caption_set(
            embedder, name, split, read=read, data_dir=data_dir, sample_rate=rate,
            batch_size=config.batch_size, pad_seconds=config.pad_seconds, embed_text=False)
        sets.append(caption_set)

    # Every sentence, with its set and its clip's row in the pooled audio matrix.
    audio = np.concatenate([s.audio for s in sets])
    offsets = np.cumsum([0] + [len(s.clip_ids) for s in sets])
    sentences, set_of, clip_of = [], [], []
    for k, s in enumerate(sets):
        sentences += s.captions
        set_of += [k] * len(s.captions)
        clip_of += list(s.caption_clip + offsets[k])
    set_of, clip_of = np.array(set_of), np.array(clip_of)
    stats = _Stats(config)
    stats.out["sentences"] = len(sentences)

    # Table 4: how many test (and pre-training) sentences hold each preposition.
    found = [text_lib.prepositions_in(s) for s in sentences]
    stats.out.update(preposition_counts(sentences, "pte"))
    stats.out.update(pretraining_counts(embedder, config, data_dir=data_dir, rate=rate))

    # The manipulated sentences, embedded with the originals they need in one pass.
    as_then = {i: text_lib.swap_as_then(s) for i, s in enumerate(sentences)}
    as_items = [i for i, m in as_then.items() if m and text_lib.has_word(sentences[i], "as")]
    then_items = [i for i, m in as_then.items() if m and text_lib.has_word(sentences[i], "then")]
    clause = {i: text_lib.swap_clauses(sentences[i]) for i, f in enumerate(found) if f}
    swap_items = [i for i, m in clause.items() if m is not None]
    bat_local, bat_swapped = _balanced_bat(sentences, config)
    needed = sorted(set(as_items + then_items + swap_items + bat_local))
    extra = ([as_then[i] for i in as_items] + [as_then[i] for i in then_items]
             + [clause[i] for i in swap_items] + bat_swapped)
    if needed or extra:
        text = embed.embed_texts(embedder, [sentences[i] for i in needed] + extra,
                                 batch_size=config.text_batch_size, desc="probe sentences")
    else:
        # Nothing to query: the as/then, PTe and BAT figures stay out of the results.
        log.warning("no test sentence of %s holds \"as\", \"then\" or %s: the as/then, "
                    "PTe and BAT figures are not computed", config.datasets,
                    "/".join(text_lib.PTE_PREPOSITIONS))
        text = np.zeros((0, audio.shape[1]), audio.dtype)
    row = {i: r for r, i in enumerate(needed)}
    _, as_swapped, then_swapped, clause_text, bat_text = _split_rows(
        text, [len(needed), len(as_items), len(then_items), len(swap_items), len(bat_swapped)])

    # as/then: the retrieval set is the clips of all sentences with that word.
    for word, items, swapped_text in (("as", as_items, as_swapped),
                                      ("then", then_items, then_swapped)):
        if not items:
            log.warning("no test sentence with %r", word)
            continue
        clips = np.unique(clip_of[items])
        local = np.searchsorted(clips, clip_of[items])
        relevant = np.zeros((len(items), len(clips)), bool)
        relevant[np.arange(len(items)), local] = True
        other = "then" if word == "as" else "as"
        stats.add(f"{word}_r10", _hits(text[[row[i] for i in items]], audio[clips], relevant, 10))
        stats.add(f"{word}_{other}_r10", _hits(swapped_text, audio[clips], relevant, 10))

    # PTe: original vs clause-swapped queries, each against its own test set's clips.
    if swap_items:
        original, swapped = [], []
        for k in range(len(sets)):
            mine = [j for j, i in enumerate(swap_items) if set_of[i] == k]
            if not mine:
                continue
            lo, hi = offsets[k], offsets[k + 1]
            relevant = np.zeros((len(mine), hi - lo), bool)
            relevant[np.arange(len(mine)), clip_of[[swap_items[j] for j in mine]] - lo] = True
            rows = [row[swap_items[j]] for j in mine]
            original.append(_hits(text[rows], audio[lo:hi], relevant, 1))
            swapped.append(_hits(clause_text[mine], audio[lo:hi], relevant, 1))
        original, swapped = np.concatenate(original), np.concatenate(swapped)
        stats.add("swap_r1_original", original)
        stats.add("swap_r1_swapped", swapped)
        stats.add_difference("swap_r1_delta", original, swapped)

    if bat_local:
        stats.add("bat", order.bat_scores(audio[clip_of[bat_local]],
                                          text[[row[i] for i in bat_local]], bat_text,
                                          tie_tolerance=config.tie_tolerance))
    if config.acba_pairs:
        _acba_controls(embedder, config, read=read, data_dir=data_dir, rate=rate, stats=stats,
                       eligible=acba_pool)
    return stats.out


def run(embedder, config, *, data_dir: str, read, heldout=None, **unused) -> dict[str, float]:
    if config.corpus not in CORPORA:
        raise data_lib.TaskInputError(f"corpus must be one of {CORPORA}, got {config.corpus!r}")
    synthetic = config.corpus == "synthetic" or (
        config.corpus == "auto" and trained_on_synthetic(embedder))
    if synthetic:
        return run_synthetic(embedder, config, heldout=heldout)
    if not data_dir:
        raise data_lib.TaskInputError("the probes on the paper's test sets need --data_dir (or "
                         "corpus=synthetic for the built-in corpus)")
    return run_paper(embedder, config, read=read, data_dir=data_dir)
