"""TFDS builder for ESC-50 as released (github.com/karolpiczak/ESC-50).

Layout: `meta/esc50.csv` (filename, fold, target, category, esc10, src_file, take) and
`audio/<filename>` (5 s, 44.1 kHz mono wav). One split, "train", holding all 2,000 clips:
the release defines folds, not splits, and the zero-shot evaluation averages over folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import builder_base

METADATA = "meta/esc50.csv"
# Class names by `target` index, as the release spells them.
CLASSES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing",
    "brushing_teeth", "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening",
    "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane",
    "fireworks", "hand_saw",
)  # fmt: skip


LAYOUT = builder_base.FoldedLabels(
    dataset="ESC-50", metadata=METADATA, classes=CLASSES, file_column="filename",
    fold_column="fold", index_column="target", name_column="category", folder_per_fold=False,
    folds=5)


class Esc50(builder_base.AudioDatasetBuilder):
    name = "esc50"
    SPLITS = ("train",)
    DESCRIPTION = "ESC-50: environmental sound classification, 50 classes x 40 clips, 5 folds."
    HOMEPAGE = "https://github.com/karolpiczak/ESC-50"
    CITATION = (
        "@inproceedings{piczak2015esc, title={{ESC}: Dataset for Environmental Sound "
        "Classification}, author={Piczak, Karol J.}, booktitle={ACM Multimedia}, year={2015}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download and unpack https://github.com/karolpiczak/ESC-50/archive/master.zip; "
        "pass the folder holding meta/esc50.csv and audio/ as --manual_dir."
    )

    def _features(self):
        return {"label": tfds.features.ClassLabel(names=CLASSES), "fold": tfds.features.Scalar(np.int32)}

    def _read_release(self, manual_dir: Path, report: builder_base.Report):
        return {"train": builder_base.read_folded_labels(manual_dir, LAYOUT)}
