"""TFDS builder for UrbanSound8K as released (urbansounddataset.weebly.com).

Layout: `metadata/UrbanSound8K.csv` (slice_file_name, fsID, start, end, salience, fold,
classID, class) and `audio/fold<fold>/<slice_file_name>`. The excerpts (<= 4 s) keep their
Freesound sources' formats: rates from 8 to 192 kHz, 1 or 2 channels, 8/16/24-bit PCM,
float and ADPCM wav; all decode through libsndfile. One split, "train", holding every
clip: the release defines folds, not splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import builder_base

METADATA = "metadata/UrbanSound8K.csv"
CLASSES = (
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
    "engine_idling", "gun_shot", "jackhammer", "siren", "street_music",
)  # fmt: skip  (by classID)


class UrbanSound8k(builder_base.AudioDatasetBuilder):
    name = "urbansound8k"
    SPLITS = ("train",)
    DESCRIPTION = "UrbanSound8K: 8,732 labelled urban sound excerpts (<= 4 s), 10 classes, 10 folds."
    HOMEPAGE = "https://urbansounddataset.weebly.com/urbansound8k.html"
    CITATION = (
        "@inproceedings{salamon2014dataset, title={A Dataset and Taxonomy for Urban Sound Research}, "
        "author={Salamon, Justin and Jacoby, Christopher and Bello, Juan Pablo}, "
        "booktitle={ACM Multimedia}, year={2014}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download UrbanSound8K.tar.gz (https://urbansounddataset.weebly.com/urbansound8k.html) and "
        "unpack it; pass the UrbanSound8K folder (holding metadata/ and audio/) as --manual_dir."
    )

    def _features(self):
        return {"label": tfds.features.ClassLabel(names=CLASSES), "fold": tfds.features.Scalar(np.int32)}

    def _read_release(self, manual_dir: Path, report: builder_base.Report):
        meta = builder_base.find_release_file(manual_dir, METADATA)
        root = builder_base.release_root(meta, METADATA)
        index = builder_base.AudioIndex(manual_dir)
        clips = []
        rows = builder_base.read_table(meta, ("slice_file_name", "fold", "classID", "class"))
        for line, row in enumerate(rows, 2):
            try:
                class_id, fold = int(row["classID"]), int(row["fold"])
            except ValueError as e:
                raise ValueError(f"{meta} line {line}: {e}") from e
            if not 0 <= class_id < len(CLASSES) or CLASSES[class_id] != row["class"]:
                raise ValueError(
                    f"{meta} line {line}: classID {class_id} with class {row['class']!r} does not "
                    "match the UrbanSound8K class list"
                )
            name = row["slice_file_name"]
            expected = root / "audio" / f"fold{fold}" / name
            clips.append(
                builder_base.Clip(
                    id=name,
                    path=index.find(name, expected=expected, split_dirs=(f"fold{fold}",)),
                    features={"label": row["class"], "fold": fold},
                    expected=str(expected),
                )
            )
        return {"train": clips}
