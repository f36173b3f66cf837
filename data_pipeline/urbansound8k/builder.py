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


LAYOUT = builder_base.FoldedLabels(
    dataset="UrbanSound8K", metadata=METADATA, classes=CLASSES, file_column="slice_file_name",
    fold_column="fold", index_column="classID", name_column="class", folder_per_fold=True,
    folds=10)


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
        return {"train": builder_base.read_folded_labels(manual_dir, LAYOUT)}
