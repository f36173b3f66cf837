"""Open-vocabulary sound event detection on DESED (Sec. 2.4; Table 1).

The audio encoder slides over each clip: frame i covers [i*hop, (i+1)*hop) (hop 50 ms) and
is embedded from the window of `window_seconds` (1 s) centred on it, zero-padded beyond the
clip's ends; for a chunked model (Transformer head) the window is rounded up to whole chunks.
Each frame's cosine similarity to each class label's sentence (prompt template as in
zeroshot) above a threshold marks the class active there; runs of active frames are events.

The clips are split at random (seeded) into 20% validation and 80% test. The threshold is
the value of an evenly spaced grid over [0, 1] that maximises the selection metric
(default: segment-based F1) on the validation clips (an error if they hold no event, since
no threshold is then better than another); the test clips are then scored with
sed_eval's segment-based metrics on 1 s segments: F1 (overall, i.e. micro), class-wise
averaged F1 (macro), error rate. A class with no output on a split scores F1 0, not
undefined (sed_eval's `empty_system_output_handling="zero_score"`).

The threshold search needs the metrics at ~100 thresholds, so it uses `segment_scores`, a
vectorised re-implementation of sed_eval's segment-based counting (a segment is active for a
class when any active frame overlaps it: sed_eval's floor(onset)/ceil(offset) rule), and the
test set is scored by sed_eval itself. tests/test_sed.py checks that the two agree.
"""

from __future__ import annotations

import logging
import math
import sys
import types
from typing import Sequence

import ml_collections
import numpy as np
from tqdm import tqdm

from atjax.evaluate import data as data_lib
from atjax.evaluate import embed
from atjax.evaluate import zeroshot

log = logging.getLogger(__name__)

DESED_CLASSES = ("Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog",
                 "Electric_shaver_toothbrush", "Frying", "Running_water", "Speech",
                 "Vacuum_cleaner")
SELECT = ("f1", "f1_macro", "error_rate")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "desed:eval"
    c.classes = DESED_CLASSES
    c.prompt = zeroshot.DEFAULT_PROMPT
    c.lowercase_labels = True
    c.hop_seconds = 0.05
    c.window_seconds = 1.0
    c.segment_seconds = 1.0
    c.validation_fraction = 0.2
    c.seed = 0
    c.thresholds = 101              # grid points in [0, 1]
    c.select = "f1"                 # f1 | f1_macro | error_rate (minimised)
    c.batch_size = 64               # windows per embed_audio call
    c.text_batch_size = 256
    c.sample_rate = 0               # rate the data was prepared at; 0 = the model's rate
    return c


# ------------------------------------------------------------------------------------------
# Frames and events


def frame_times(num_frames: int, hop_seconds: float, duration: float) -> np.ndarray:
    """`[num_frames + 1]` frame boundaries in seconds (rounded to 1 us so that 60 * 0.05 is
    3.0, not 3.0000000000000004), the last one clipped to the clip's duration."""
    times = np.round(np.arange(num_frames + 1) * hop_seconds, 6)
    return np.minimum(times, duration)


def num_frames(num_samples: int, sample_rate: int, hop_seconds: float) -> int:
    return max(1, math.ceil(round(num_samples / sample_rate / hop_seconds, 6)))


def frame_windows(audio: np.ndarray, *, sample_rate: int, hop_seconds: float,
                  window_samples: int) -> np.ndarray:
    """`[frames, window_samples]` windows centred on each frame's centre (a read-only view
    into a zero-padded copy)."""
    frames = num_frames(audio.size, sample_rate, hop_seconds)
    centres = np.round((np.arange(frames) + 0.5) * hop_seconds * sample_rate).astype(np.int64)
    half = window_samples // 2
    if centres[-1] > audio.size + half:
        raise ValueError("the window must be at least as long as the hop")
    padded = np.pad(audio, (half, window_samples))
    view = np.lib.stride_tricks.sliding_window_view(padded, window_samples)
    # Row s of the view starts at original sample s - half: the window centred on c is row c.
    return view[centres]


def activity_to_events(active: np.ndarray, classes: Sequence[str], hop_seconds: float,
                       duration: float, filename: str = "") -> list[dict]:
    """Runs of active frames (`[frames, classes]` booleans) -> sed_eval event dicts."""
    times = frame_times(active.shape[0], hop_seconds, duration)
    events = []
    for c, label in enumerate(classes):
        padded = np.concatenate([[False], active[:, c].astype(bool), [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        for start, stop in zip(edges[::2], edges[1::2]):
            events.append({"filename": filename, "event_label": label,
                           "onset": float(times[start]), "offset": float(times[stop])})
    return events


def num_segments(duration: float, resolution: float) -> int:
    return int(math.ceil(duration * 1 / float(resolution)))


def segment_roll(events, classes: Sequence[str], duration: float,
                 resolution: float) -> np.ndarray:
    """`[segments, classes]` booleans from event dicts, by sed_eval's rule: an event marks
    segments floor(onset / r) to ceil(offset / r) - 1; the roll spans the clip's duration."""
    index = {c: i for i, c in enumerate(classes)}
    roll = np.zeros((num_segments(duration, resolution), len(classes)), bool)
    for e in events:
        if e["event_label"] not in index:
            raise ValueError(f"event label {e['event_label']!r} is not among the classes "
                             f"{list(classes)}")
        lo = int(math.floor(e["onset"] * 1 / float(resolution)))
        hi = int(math.ceil(e["offset"] * 1 / float(resolution)))
        roll[max(lo, 0):hi, index[e["event_label"]]] = True
    return roll


def segment_max(similarity: np.ndarray, hop_seconds: float, duration: float,
                resolution: float) -> np.ndarray:
    """`[segments, classes]`: the highest frame similarity among the frames overlapping each
    segment. `segment_max > t` is the segment roll of the events found at threshold t."""
    times = frame_times(similarity.shape[0], hop_seconds, duration)
    lo = np.floor(times[:-1] * 1 / float(resolution)).astype(np.int64)
    hi = np.ceil(times[1:] * 1 / float(resolution)).astype(np.int64)
    segments = num_segments(duration, resolution)
    out = np.full((segments, similarity.shape[1]), -np.inf)
    for i in range(similarity.shape[0]):
        span = slice(max(lo[i], 0), min(hi[i], segments))
        out[span] = np.maximum(out[span], similarity[i])
    return out


# ------------------------------------------------------------------------------------------
# Segment-based metrics


def _f1(tp, sys_count, ref_count):
    """sed_eval's F-measure with zero_score handling: precision 0 without output, recall
    undefined (NaN) without reference."""
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(sys_count > 0, tp / np.maximum(sys_count, 1), 0.0)
        recall = np.where(ref_count > 0, tp / np.maximum(ref_count, 1), np.nan)
        f = 2 * precision * recall / (precision + recall)
    f = np.where((precision == 0) & (recall == 0), 0.0, f)
    return f, precision, recall


def segment_scores(reference: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    """Segment-based F1 (overall), F1 macro (class-wise, NaN classes left out as sed_eval
    does), error rate, precision, recall from `[segments, classes]` boolean rolls."""
    ref, est = np.asarray(reference, bool), np.asarray(estimate, bool)
    tp_seg = np.sum(ref & est, axis=1)
    ref_seg, sys_seg = ref.sum(axis=1), est.sum(axis=1)
    subs = np.sum(np.minimum(ref_seg, sys_seg) - tp_seg)
    dels = np.sum(np.maximum(0, ref_seg - sys_seg))
    ins = np.sum(np.maximum(0, sys_seg - ref_seg))
    n_ref = ref_seg.sum()
    f1, precision, recall = _f1(tp_seg.sum(), sys_seg.sum(), n_ref)
    class_f1, _, _ = _f1(np.sum(ref & est, axis=0), est.sum(axis=0), ref.sum(axis=0))
    eps = np.spacing(1)
    macro = float(np.nanmean(class_f1)) if np.any(np.isfinite(class_f1)) else float("nan")
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall),
            "f1_macro": macro, "error_rate": float((subs + dels + ins) / (n_ref + eps))}


def sweep(reference: np.ndarray, seg_max: np.ndarray, thresholds: np.ndarray) -> list[dict]:
    """segment_scores at each threshold (active where similarity > threshold)."""
    return [segment_scores(reference, seg_max > t) for t in thresholds]


def choose_threshold(scores: list[dict], thresholds: np.ndarray, select: str) -> int:
    """Index of the best threshold; ties go to the lowest threshold."""
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")
    values = np.array([s[select] for s in scores], np.float64)
    if select == "error_rate":
        values = -values
    values = np.where(np.isnan(values), -np.inf, values)
    return int(np.argmax(values))


def _sed_eval():
    """sed_eval, imported even where setuptools >= 81 dropped pkg_resources: dcase_util
    imports it at module level but only uses it in helpers that this code never calls, so
    an empty stand-in is put in place for the import and removed right after."""
    try:
        import sed_eval  # noqa: F401
        import dcase_util  # noqa: F401
        return sed_eval, dcase_util
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            raise ModuleNotFoundError(f"sed_eval is needed for the sed task: pip install "
                                      f"sed_eval ({e})") from e
    for name in [m for m in sys.modules if m.split(".")[0] in ("sed_eval", "dcase_util")]:
        del sys.modules[name]
    sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
    try:
        import dcase_util
        import sed_eval
    finally:
        del sys.modules["pkg_resources"]
    return sed_eval, dcase_util


def sed_eval_scores(clips, classes: Sequence[str], resolution: float) -> dict[str, float]:
    """Segment-based metrics by sed_eval. `clips`: (reference events, estimated events,
    duration s) per clip, events as dicts with event_label/onset/offset."""
    sed_eval, dcase_util = _sed_eval()
    m = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=list(classes),
                                                 time_resolution=float(resolution))
    # SegmentBasedMetrics' constructor does not take it; the base class reads the attribute.
    m.empty_system_output_handling = "zero_score"
    for reference, estimate, duration in clips:
        m.evaluate(reference_event_list=dcase_util.containers.MetaDataContainer(reference),
                   estimated_event_list=dcase_util.containers.MetaDataContainer(estimate),
                   evaluated_length_seconds=float(duration))
    overall = m.results_overall_metrics()
    average = m.results_class_wise_average_metrics()
    class_wise = m.results_class_wise_metrics()
    out = {"f1": overall["f_measure"]["f_measure"],
           "precision": overall["f_measure"]["precision"],
           "recall": overall["f_measure"]["recall"],
           "f1_macro": average["f_measure"]["f_measure"],
           "error_rate": overall["error_rate"]["error_rate"]}
    for label in classes:
        out[f"f1_{label}"] = class_wise[label]["f_measure"]["f_measure"]
    return {k: float(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------
# The task


def _similarities(embedder, examples, class_text, *, rate, config, window_samples, desc):
    """Per clip: (id, reference events, duration, `[frames, classes]` similarities)."""
    classes = set(config.classes)
    clips = []
    pending: list[tuple[int, np.ndarray]] = []   # (clip index, [frames, W] windows)
    rows: dict[int, list[np.ndarray]] = {}
    bar = tqdm(desc=desc, unit="window", mininterval=2.0)

    def flush():
        windows = np.concatenate([w for _, w in pending])
        sims = []
        for start in range(0, len(windows), config.batch_size):
            part = windows[start:start + config.batch_size]
            emb = embed.checked(embedder.embed_audio(np.ascontiguousarray(part), rate),
                                len(part), "audio")
            sims.append(emb @ class_text.T)
            bar.update(len(part))
        sims = np.concatenate(sims)
        offset = 0
        for index, w in pending:
            rows.setdefault(index, []).append(sims[offset:offset + len(w)])
            offset += len(w)
        pending.clear()

    for example in examples:
        if "events" not in example:
            raise data_lib.TaskInputError(f"{config.dataset} has no event annotations")
        audio = data_lib.to_float(example["audio"])
        if audio.ndim != 1 or audio.size == 0:
            raise data_lib.TaskInputError(f"clip {example['id']} is empty or not mono")
        duration = audio.size / rate
        reference = [{"filename": example["id"], "event_label": label, "onset": float(on),
                      "offset": float(off)} for on, off, label in example["events"]]
        unknown = sorted({e["event_label"] for e in reference} - classes)
        if unknown:
            raise data_lib.TaskInputError(f"clip {example['id']}: event labels {unknown} are not among the "
                             f"classes {list(config.classes)} (setting `classes`)")
        clips.append((example["id"], reference, duration))
        pending.append((len(clips) - 1, frame_windows(
            audio, sample_rate=rate, hop_seconds=config.hop_seconds,
            window_samples=window_samples)))
        if sum(len(w) for _, w in pending) >= 4 * config.batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    if len(clips) < 2:
        raise data_lib.TaskInputError(f"{config.dataset}: need at least 2 clips for a validation/test "
                         f"split, got {len(clips)}")
    return [(cid, ref, dur, np.concatenate(rows[i])) for i, (cid, ref, dur) in enumerate(clips)]


def split_clips(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (validation, test) indices; at least one clip in each."""
    if not 0 < fraction < 1:
        raise data_lib.TaskInputError(f"validation_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(count)
    n_val = min(max(1, int(round(fraction * count))), count - 1)
    return np.sort(order[:n_val]), np.sort(order[n_val:])


def run(embedder, config, *, data_dir: str, read, **unused) -> dict[str, float]:
    rate = int(config.sample_rate) or int(embedder.sample_rate)
    sources = data_lib.parse_sources(config.dataset)
    if len(sources) != 1:
        raise data_lib.TaskInputError(f"sed evaluates one dataset (config.dataset, e.g. desed:eval), got "
                         f"{config.dataset!r}")
    (name, split), = sources
    classes = list(config.classes)
    resolution = float(config.segment_seconds)
    window = int(round(config.window_seconds * rate))
    chunk = embed.chunk_samples(embedder, rate)
    if chunk:
        window = -(-window // chunk) * chunk
    text = embed.embed_texts(
        embedder, [zeroshot.label_text(c, config.prompt, config.lowercase_labels)
                   for c in classes], batch_size=config.text_batch_size, desc="classes")
    examples = read(name, split, data_dir, rate)
    clips = _similarities(embedder, examples, text, rate=rate, config=config,
                          window_samples=window, desc=f"{name}:{split} windows")
    val, test = split_clips(len(clips), config.validation_fraction, config.seed)

    val_ref = np.concatenate([segment_roll(clips[i][1], classes, clips[i][2], resolution)
                              for i in val])
    val_max = np.concatenate([segment_max(clips[i][3], config.hop_seconds, clips[i][2],
                                          resolution) for i in val])
    if not val_ref.any():
        # Every score of the search is then undefined (F1) or rewards silence (error
        # rate): no threshold would be chosen by the data.
        raise data_lib.TaskInputError(
            f"{name}:{split}: the {len(val)} validation clips (validation_fraction="
            f"{config.validation_fraction}, seed={config.seed}) hold no events of the classes, "
            "so no detection threshold can be chosen; raise the setting validation_fraction "
            "or change seed")
    thresholds = np.linspace(0.0, 1.0, int(config.thresholds))
    scores = sweep(val_ref, val_max, thresholds)
    best = choose_threshold(scores, thresholds, config.select)
    threshold = float(thresholds[best])

    scored = []
    for i in test:
        clip_id, reference, duration, sim = clips[i]
        estimate = activity_to_events(sim > threshold, classes, config.hop_seconds, duration,
                                      filename=clip_id)
        scored.append((reference, estimate, duration))
    values = sed_eval_scores(scored, classes, resolution)
    values.update({"threshold": threshold,
                   f"validation_{config.select}": scores[best][config.select],
                   "clips_validation": len(val), "clips_test": len(test)})
    return {f"{name}/{k}": v for k, v in values.items()}
