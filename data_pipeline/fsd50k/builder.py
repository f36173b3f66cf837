"""TFDS builder for FSD50K as released (Zenodo 4060432), as the paper uses it: each clip's
labels and its uploader's description joined into one caption.

Layout: `FSD50K.ground_truth/dev.csv` (fname, labels, mids, split; split is "train" for
36,796 clips and "val" for 4,170) and `eval.csv` (fname, labels, mids; 10,231 clips),
`FSD50K.ground_truth/vocabulary.csv` (index, label, mid without a header: the 200 classes;
a label of dev.csv or eval.csv not in it is an error naming the row),
`FSD50K.metadata/{dev,eval}_clips_info_FSD50K.json` (per fname: title, description, tags,
license, uploader) and the audio in `FSD50K.dev_audio/` and `FSD50K.eval_audio/`
(<fname>.wav, 44.1 kHz, 16-bit mono). Splits: "train" and "val" from dev.csv's split
column, "test" from eval.csv. Every element has one caption and the raw label names.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Sequence

import tensorflow_datasets as tfds

from data_pipeline import builder_base

GROUND_TRUTH = {"dev": "FSD50K.ground_truth/dev.csv", "eval": "FSD50K.ground_truth/eval.csv"}
CLIPS_INFO = {
    "dev": "FSD50K.metadata/dev_clips_info_FSD50K.json",
    "eval": "FSD50K.metadata/eval_clips_info_FSD50K.json",
}
VOCABULARY = "FSD50K.ground_truth/vocabulary.csv"
AUDIO_DIRS = {"dev": "FSD50K.dev_audio", "eval": "FSD50K.eval_audio"}
DEV_SPLITS = {"train": "train", "val": "val"}

_TAG = re.compile(r"<[^>]*>")
# A URL ends before whitespace, brackets or quotes, and not on sentence punctuation.
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]]*[^\s<>\"'()\[\].,;:!?]", re.IGNORECASE)
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")
_SPACE = re.compile(r"\s+")


def clean_description(text: str) -> str:
    """Freesound descriptions without HTML markup, entities, URLs or line breaks."""
    text = _TAG.sub(" ", text or "")
    text = html.unescape(text)
    text = _URL.sub(" ", text)
    text = _EMPTY_BRACKETS.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    # URL removal can leave "at ." or a dangling colon; drop the space before punctuation.
    return re.sub(r"\s+([.,;:!?])", r"\1", text)


def label_phrase(labels: Sequence[str]) -> str:
    """["Electric_guitar", "Guitar", "Music"] -> "Electric guitar, guitar, and music"."""
    words = [label.replace("_", " ").strip() for label in labels if label.strip()]
    if not words:
        return ""
    words = [words[0]] + [w[:1].lower() + w[1:] for w in words[1:]]
    if len(words) == 1:
        phrase = words[0]
    elif len(words) == 2:
        phrase = f"{words[0]} and {words[1]}"
    else:
        # Oxford comma: labels such as "Male speech and man speaking" contain "and" themselves.
        phrase = ", ".join(words[:-1]) + ", and " + words[-1]
    return phrase[:1].upper() + phrase[1:]


def sentence(labels: Sequence[str], description: str) -> str:
    """The caption: the labels as a phrase, then the cleaned description.

    Labels come first so that a text encoder truncating long descriptions still sees them.
    """
    phrase = label_phrase(labels)
    description = clean_description(description)
    if not description:
        return f"{phrase}."
    return f"{phrase}. {description[:1].upper() + description[1:]}" if phrase else description


def read_vocabulary(path: Path) -> set[str]:
    """The class labels of vocabulary.csv (rows index,label,mid; a header row is tolerated)."""
    labels = set()
    text = path.read_text(encoding="utf-8-sig")
    for line, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise ValueError(f"{path} line {line}: expected index,label,mid, got {row}")
        if line == 1 and not row[0].strip().isdigit():
            continue  # a header
        labels.add(row[1].strip())
    if not labels:
        raise ValueError(f"{path} lists no classes")
    return labels


class Fsd50k(builder_base.AudioDatasetBuilder):
    name = "fsd50k"
    SPLITS = ("train", "val", "test")
    DESCRIPTION = (
        "FSD50K: Freesound clips (0.3-30 s) labelled with 200 AudioSet classes; each caption is the "
        "labels and the uploader's description joined into one sentence."
    )
    HOMEPAGE = "https://zenodo.org/record/4060432"
    CITATION = (
        "@article{fonseca2022fsd50k, title={{FSD50K}: an Open Dataset of Human-Labeled Sound Events}, "
        "author={Fonseca, Eduardo and Favory, Xavier and Pons, Jordi and Font, Frederic and Serra, Xavier}, "
        "journal={IEEE/ACM TASLP}, volume={30}, pages={829--852}, year={2022}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download FSD50K from https://zenodo.org/record/4060432 (FSD50K.ground_truth.zip, "
        "FSD50K.metadata.zip, FSD50K.dev_audio.z01-z05+zip, FSD50K.eval_audio.z01+zip), unpack the "
        "archives into one folder and pass it as --manual_dir."
    )

    def _features(self):
        return {
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "labels": tfds.features.Sequence(tfds.features.Text()),
        }

    def _read_release(self, manual_dir: Path, report: builder_base.Report):
        tables = {part: builder_base.find_release_file(manual_dir, rel) for part, rel in GROUND_TRUTH.items()}
        infos = {part: builder_base.find_release_file(manual_dir, rel) for part, rel in CLIPS_INFO.items()}
        vocabulary_file = builder_base.find_release_file(manual_dir, VOCABULARY)
        vocabulary = read_vocabulary(vocabulary_file)
        root = builder_base.release_root(tables["dev"], GROUND_TRUTH["dev"])
        index = builder_base.AudioIndex(manual_dir)
        clips: dict[str, list[builder_base.Clip]] = {"train": [], "val": [], "test": []}
        for part in ("dev", "eval"):
            try:
                info = json.loads(infos[part].read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{infos[part]} is not valid JSON: {e}") from e
            required = ("fname", "labels", "split") if part == "dev" else ("fname", "labels")
            listed: dict[str, int] = {}
            for line, row in enumerate(builder_base.read_table(tables[part], required), 2):
                # Also across dev's train and val: one clip in both would leak between them.
                first = listed.setdefault(row["fname"], line)
                if first != line:
                    raise ValueError(f"{tables[part]}: line {first} and line {line} both list the clip "
                                     f"{row['fname']!r}; remove one of the two rows")
                if part == "dev":
                    if row["split"] not in DEV_SPLITS:
                        raise ValueError(f"{tables[part]} line {line}: split {row['split']!r} is not train or val")
                    split = DEV_SPLITS[row["split"]]
                else:
                    split = "test"
                labels = [label.strip() for label in row["labels"].split(",") if label.strip()]
                unknown = [label for label in labels if label not in vocabulary]
                if unknown:
                    raise ValueError(f"{tables[part]} line {line}: label {unknown[0]!r} of clip {row['fname']!r} "
                                     f"is not one of the {len(vocabulary)} classes of {vocabulary_file}")
                clip_info = info.get(row["fname"])
                if clip_info is None:
                    report.note(split, "clips without an entry in the clips-info JSON (caption from labels only)")
                    description = ""
                else:
                    description = clip_info.get("description") or ""
                caption = sentence(labels, description)
                if not labels and not clean_description(description):
                    report.skip(split, row["fname"], "no captions")
                    continue
                expected = root / AUDIO_DIRS[part] / f"{row['fname']}.wav"
                clips[split].append(
                    builder_base.Clip(
                        id=row["fname"],
                        path=index.find(expected.name, expected=expected, split_dirs=(AUDIO_DIRS[part],)),
                        features={"captions": [caption], "labels": labels},
                        expected=str(expected),
                        listed_at=(str(tables[part]), f"line {line}"),
                    )
                )
        return clips
