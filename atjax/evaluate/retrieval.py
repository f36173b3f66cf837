"""Language-based audio retrieval (Sec. 2.3; Tables 1, 2 and 5): every caption is a query.

Text-to-audio: each caption of the test set queries all clips of that set; its one correct
item is its own clip (AudioCaps' five captions of a clip share it). Audio-to-text: each clip
queries all captions; its correct items are its captions. Metrics R@1, R@5, R@10 and mAP@10
(atjax.metrics; pessimistic ties). Keys are `<dataset>/<direction>_R@k` and
`<dataset>/<direction>_mAP@10`, e.g. "audiocaps/t2a_R@10"; with the one-dataset shorthand
(`dataset=..., split=...`, the trainer's validation) the prefix is left out ("t2a_R@10").
A dataset evaluated on a split other than its test split is keyed `<dataset>_<split>`.

Empty captions are skipped and counted (`<dataset>/skipped_captions`); a clip left without
captions stays in the collection as a distractor but is no audio-to-text query.
"""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from atjax import metrics
from atjax.evaluate import data as data_lib
from atjax.evaluate import embed

log = logging.getLogger(__name__)

# The paper's test splits (split names of data_pipeline's builders).
TEST_SPLITS = {"audiocaps": "test", "clotho": "evaluation", "clotho_2022": "test"}
DEFAULT_DATASETS = "audiocaps:test,clotho:evaluation,clotho_2022:test"


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.datasets = DEFAULT_DATASETS   # name:split, comma-separated
    c.dataset = ""                  # one-dataset shorthand (metrics keyed without prefix)
    c.split = ""                    # its split ("" = the dataset's test split)
    c.ks = (1, 5, 10)
    c.map_k = 10
    c.directions = "t2a,a2t"
    c.batch_size = 32               # clips per embed_audio call (clips of equal length)
    c.pad_seconds = 0.0             # > 0: pad clips to multiples of it (see evaluate.embed)
    c.text_batch_size = 256
    c.sample_rate = 0               # rate the data was prepared at; 0 = the model's rate
    return c


DIRECTIONS = ("t2a", "a2t")


def parse_directions(spec: str) -> tuple[str, ...]:
    """"t2a,a2t" -> ("t2a", "a2t"); empty, unknown or repeated directions are errors."""
    directions = tuple(d.strip() for d in str(spec).split(",") if d.strip())
    if not directions:
        raise ValueError(f"setting 'directions' names no direction ({spec!r}); "
                         f"choose from {','.join(DIRECTIONS)}")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise ValueError(f"setting 'directions': unknown direction(s) {unknown} "
                         f"(known: {','.join(DIRECTIONS)})")
    if len(set(directions)) != len(directions):
        raise ValueError(f"setting 'directions' repeats a direction: {spec!r}")
    return directions


def check_config(config) -> None:
    """Refuses settings that would give meaningless or no metrics, before any embedding."""
    if isinstance(config.ks, (str, bytes)) or not isinstance(config.ks, (tuple, list)):
        raise ValueError(f"setting 'ks' must be a tuple of cutoffs, got {config.ks!r}")
    if not config.ks:
        raise ValueError("setting 'ks' is empty: give at least one R@k cutoff, e.g. (1, 5, 10)")
    for k in config.ks:
        try:
            metrics.check_k(k)
        except ValueError:
            raise ValueError(f"setting 'ks' must hold positive integers, "
                             f"got {tuple(config.ks)!r}") from None
    try:
        metrics.check_k(config.map_k)
    except ValueError:
        raise ValueError(f"setting 'map_k' must be a positive integer, "
                         f"got {config.map_k!r}") from None
    parse_directions(config.directions)
    for name in ("batch_size", "text_batch_size"):
        if isinstance(config[name], bool) or not isinstance(config[name], int) \
                or config[name] < 1:
            raise ValueError(f"setting {name!r} must be an integer >= 1, got {config[name]!r}")


@dataclasses.dataclass
class CaptionSet:
    """A captioned test set, embedded: clip i has embedding audio[i]; caption j belongs to
    clip caption_clip[j]."""

    name: str
    split: str
    clip_ids: list[str]
    audio: np.ndarray
    captions: list[str]
    caption_clip: np.ndarray
    skipped_captions: int


def data_rate(embedder, config) -> int:
    return int(config.sample_rate) or int(embedder.sample_rate)


def embed_caption_set(embedder, name: str, split: str, *, read, data_dir: str,
                      sample_rate: int, batch_size: int = 32, pad_seconds: float = 0.0,
                      text_batch_size: int = 256, embed_text: bool = True):
    """Reads and embeds one captioned split. Returns (CaptionSet, caption embeddings or None)."""
    examples = read(name, split, data_dir, sample_rate)
    clip_ids, captions, caption_clip = [], [], []
    skipped = 0

    def audio_stream():
        nonlocal skipped
        for example in examples:
            if "captions" not in example:
                raise ValueError(f"{name}:{split} has no captions (not a caption dataset)")
            index = len(clip_ids)
            clip_ids.append(example["id"])
            for caption in example["captions"]:
                if caption.strip():
                    captions.append(caption.strip())
                    caption_clip.append(index)
                else:
                    skipped += 1
            yield example["audio"]

    audio = embed.embed_clips(embedder, audio_stream(), sample_rate=sample_rate,
                              batch_size=batch_size, pad_seconds=pad_seconds,
                              total=data_lib.size_of(examples),
                              desc=f"{name}:{split} audio")
    if skipped:
        log.warning("%s:%s: skipped %d empty captions", name, split, skipped)
    if not captions:
        raise ValueError(f"{name}:{split} holds no non-empty caption")
    text = (embed.embed_texts(embedder, captions, batch_size=text_batch_size,
                              desc=f"{name}:{split} text") if embed_text else None)
    return CaptionSet(name, split, clip_ids, audio, captions,
                      np.asarray(caption_clip, np.int64), skipped), text


def retrieval_metrics(text: np.ndarray, audio: np.ndarray, caption_clip: np.ndarray, *,
                      ks=(1, 5, 10), map_k: int = 10,
                      directions=("t2a", "a2t")) -> dict[str, float]:
    """R@k and mAP@map_k in both directions from unit-norm embeddings; caption i
    describes clip caption_clip[i]."""
    directions = tuple(directions)
    if not directions:
        raise ValueError("directions is empty: choose t2a, a2t or both")
    caption_clip = np.asarray(caption_clip)
    if caption_clip.ndim != 1 or len(caption_clip) != len(text):
        raise ValueError(f"caption_clip must give one clip index per caption: {len(text)} "
                         f"captions, caption_clip of shape {caption_clip.shape}")
    if not np.issubdtype(caption_clip.dtype, np.integer):
        raise ValueError(f"caption_clip must hold integer clip indices, got {caption_clip.dtype}")
    if len(caption_clip) and (caption_clip.min() < 0 or caption_clip.max() >= len(audio)):
        # A negative index would silently wrap around to the last clips.
        raise ValueError(f"caption_clip holds clip indices outside [0, {len(audio)}): "
                         f"{caption_clip.min()} to {caption_clip.max()}")
    similarity = text @ audio.T
    relevant = np.zeros(similarity.shape, bool)
    relevant[np.arange(len(caption_clip)), caption_clip] = True
    out = {}
    for direction in directions:
        if direction == "t2a":
            sim, rel = similarity, relevant
        elif direction == "a2t":
            queried = relevant.any(axis=0)   # clips with at least one caption
            sim, rel = similarity.T[queried], relevant.T[queried]
        else:
            raise ValueError(f"unknown direction {direction!r} (t2a, a2t)")
        for name, value in metrics.retrieval_summary(sim, rel, ks, map_k).items():
            out[f"{direction}_{name}"] = value
    return out


def _datasets(config) -> tuple[list[tuple[str, str]], bool]:
    if config.dataset:
        return [(config.dataset, config.split or TEST_SPLITS.get(config.dataset, "test"))], False
    if config.split:
        raise ValueError("the setting `split` goes with `dataset`; use datasets=name:split")
    return data_lib.parse_sources(config.datasets), True


def key_prefix(name: str, split: str) -> str:
    return name if TEST_SPLITS.get(name) == split else f"{name}_{split}"


def run(embedder, config, *, data_dir: str, read, **unused) -> dict[str, float]:
    check_config(config)
    sources, prefixed = _datasets(config)
    directions = parse_directions(config.directions)
    rate = data_rate(embedder, config)
    out: dict[str, float] = {}
    for name, split in sources:
        caption_set, text = embed_caption_set(
            embedder, name, split, read=read, data_dir=data_dir, sample_rate=rate,
            batch_size=config.batch_size, pad_seconds=config.pad_seconds,
            text_batch_size=config.text_batch_size)
        values = retrieval_metrics(text, caption_set.audio, caption_set.caption_clip,
                                   ks=tuple(config.ks), map_k=config.map_k,
                                   directions=directions)
        values["clips"] = len(caption_set.clip_ids)
        values["captions"] = len(caption_set.captions)
        values["skipped_captions"] = caption_set.skipped_captions
        prefix = f"{key_prefix(name, split)}/" if prefixed else ""
        out.update({prefix + k: v for k, v in values.items()})
    return out
