"""TFDS builder for Clotho v2.1 as released (Zenodo 4783391).

Layout: `clotho_captions_<split>.csv` (file_name, caption_1 .. caption_5) for the splits
development (3,839 clips), validation (1,045) and evaluation (1,045), and the audio of each
split in `<split>/` (44.1 kHz mono wav, as the 7z archives unpack). The aac-datasets layout
(`clotho_csv_files/`, `clotho_audio_files/<split>/`) is read too: files are looked up
below the manual dir, preferring a folder named after the split. All three caption files
are required; audio may be partial (missing clips are skipped and reported).
"""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow_datasets as tfds

from data_pipeline import builder_base

SPLITS = ("development", "validation", "evaluation")


def captions_file(split: str) -> str:
    return f"clotho_captions_{split}.csv"


def caption_columns(header, path: Path) -> list[str]:
    """caption_1, caption_2, ... in numeric order (the release has five)."""
    columns = sorted((c for c in header if re.fullmatch(r"caption_\d+", c)), key=lambda c: int(c[8:]))
    if not columns:
        raise ValueError(f"{path}: no caption_<n> columns in header {list(header)}")
    return columns


class Clotho(builder_base.AudioDatasetBuilder):
    name = "clotho"
    SPLITS = SPLITS
    DESCRIPTION = "Clotho v2.1 audio captioning dataset: 15-30 s Freesound clips with 5 captions each."
    HOMEPAGE = "https://zenodo.org/record/4783391"
    CITATION = (
        "@inproceedings{drossos2020clotho, title={Clotho: an Audio Captioning Dataset}, author={Drossos, "
        "Konstantinos and Lipping, Samuel and Virtanen, Tuomas}, booktitle={ICASSP}, year={2020}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download clotho_captions_{development,validation,evaluation}.csv and "
        "clotho_audio_{development,validation,evaluation}.7z from https://zenodo.org/record/4783391, "
        "unpack the archives next to the CSV files (giving development/, validation/, evaluation/) "
        "and pass that folder as --manual_dir."
    )

    def _features(self):
        return {"captions": tfds.features.Sequence(tfds.features.Text())}

    def _read_release(self, manual_dir: Path, report: builder_base.Report):
        metas = {split: builder_base.find_release_file(manual_dir, captions_file(split)) for split in SPLITS}
        index = builder_base.AudioIndex(manual_dir)
        clips = {}
        for split, meta in metas.items():
            rows = builder_base.read_table(meta, ("file_name", "caption_1"))
            columns = caption_columns(rows[0].keys() if rows else ["caption_1"], meta)
            split_clips = []
            for line, row in enumerate(rows, 2):
                name = row["file_name"]
                captions = builder_base.clean_captions((row.get(c) for c in columns), split, report)
                if not captions:
                    report.skip(split, name, "no captions")
                    continue
                expected = meta.parent / split / name
                split_clips.append(
                    builder_base.Clip(
                        id=name,
                        path=index.find(name, expected=expected, split_dirs=(split,)),
                        features={"captions": captions},
                        expected=str(expected),
                        listed_at=(str(meta), f"line {line}"),
                    )
                )
            clips[split] = split_clips
        return clips
