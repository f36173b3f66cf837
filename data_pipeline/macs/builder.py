"""TFDS builder for MACS, Multi-Annotator Captioned Soundscapes (Zenodo 5114771).

Layout: `MACS.yaml`, a mapping with `files:`, a list of entries with `filename` and
`annotations` (each with `annotator_id`, `sentence`, `tags`): 3,930 clips with 2-5
captions. The audio is not in the MACS release: it is the TAU Urban Acoustic Scenes 2019
development set (Zenodo 2589280; 10 s, 48 kHz, 24-bit stereo), which unpacks to
`TAU-urban-acoustic-scenes-2019-development/audio/`. Clips are looked up by file name
anywhere below the manual dir (`audio/` beside MACS.yaml first), so either keep the TAU
folder next to MACS.yaml or copy the 3,930 files to `audio/`. One split, "train".
"""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds
import yaml

from data_pipeline import builder_base

METADATA = "MACS.yaml"
TAU_AUDIO = ("TAU-urban-acoustic-scenes-2019-development", "audio")


def read_macs_yaml(path: Path) -> list[tuple[str, list[str]]]:
    """(filename, sentences) per file entry, with the structure checked."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ValueError(f"{path}: expected a mapping with a 'files' list")
    entries = []
    for k, entry in enumerate(data["files"]):
        if not isinstance(entry, dict) or "filename" not in entry or not isinstance(entry.get("annotations"), list):
            raise ValueError(f"{path}: files[{k}] lacks 'filename' or an 'annotations' list")
        sentences = []
        for j, annotation in enumerate(entry["annotations"]):
            if not isinstance(annotation, dict) or "sentence" not in annotation:
                raise ValueError(f"{path}: files[{k}].annotations[{j}] has no 'sentence'")
            sentences.append(annotation["sentence"] if isinstance(annotation["sentence"], str) else None)
        entries.append((str(entry["filename"]), sentences))
    return entries


class Macs(builder_base.AudioDatasetBuilder):
    name = "macs"
    SPLITS = ("train",)
    DESCRIPTION = "MACS: 3,930 TAU Urban Acoustic Scenes 2019 clips (10 s) with 2-5 crowd-sourced captions."
    HOMEPAGE = "https://zenodo.org/record/5114771"
    CITATION = (
        "@inproceedings{martinmorato2021diversity, title={Diversity and Bias in Audio Captioning Datasets}, "
        "author={Martin-Morato, Irene and Mesaros, Annamaria}, booktitle={DCASE Workshop}, year={2021}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download MACS.yaml from https://zenodo.org/record/5114771 and the TAU Urban Acoustic Scenes "
        "2019 development audio (https://zenodo.org/record/2589280, "
        "TAU-urban-acoustic-scenes-2019-development.audio.*.zip) unpacked next to it; pass that folder "
        "as --manual_dir."
    )

    def _features(self):
        return {"captions": tfds.features.Sequence(tfds.features.Text())}

    def _read_release(self, manual_dir: Path, report: builder_base.Report):
        meta = builder_base.find_release_file(manual_dir, METADATA)
        root = meta.parent
        index = builder_base.AudioIndex(manual_dir)
        clips = []
        for k, (name, sentences) in enumerate(read_macs_yaml(meta)):
            captions = builder_base.clean_captions(sentences, "train", report)
            if not captions:
                report.skip("train", name, "no captions")
                continue
            expected = root / "audio" / name
            path = index.find(name, expected=expected, split_dirs=TAU_AUDIO)
            clips.append(builder_base.Clip(id=name, path=path, features={"captions": captions}, expected=str(expected),
                                           listed_at=(str(meta), f"files[{k}]")))
        return {"train": clips}
