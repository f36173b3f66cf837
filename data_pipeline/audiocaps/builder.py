"""TFDS builder for AudioCaps (github.com/cdjkim/audiocaps) and the users' own downloads.

Metadata: `train.csv`, `val.csv`, `test.csv` with header audiocap_id, youtube_id,
start_time, caption (in the manual dir or any folder below it, e.g. the repository's
`dataset/`). Train has one caption per row and clip; val and test five rows per clip. Rows
with the same youtube_id are one clip with all of its captions, in file order; the
element id is the youtube_id.

Audio: AudioCaps ships no audio; users download the segments from YouTube, and a part is
always gone. Every audio file below the manual dir is considered, in any folder structure
(one folder for all splits, or one per split) and with any of the usual namings:
`{youtube_id}.wav`, `Y{youtube_id}.wav` (AudioSet style), `{youtube_id}_{start_time}.wav`,
`Y{youtube_id}_{start}_{end}.wav`, with any decodable extension. A file name matches the
id that equals its stem, or the longest prefix of its stem ending before an underscore
(ids themselves may contain "_" and "-"), with or without a leading "Y". When one id has
several files, one in a folder named after the split (train; val, valid or validation;
test) wins, then lossless formats. Clips without a file are skipped and listed.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import tensorflow_datasets as tfds

from data_pipeline import builder_base

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def id_candidates(stem: str) -> list[str]:
    """Ids a file stem may name, most specific first."""
    candidates = []
    for s in (stem, stem[1:] if stem.startswith("Y") else None):
        if not s:
            continue
        candidates.append(s)
        cuts = [i for i, ch in enumerate(s) if ch == "_" and i > 0]
        candidates.extend(s[:i] for i in reversed(cuts))
    return candidates


def match_files(files, wanted: set[str]) -> dict[str, list[Path]]:
    """youtube_id -> the audio files that name it."""
    matches: dict[str, list[Path]] = collections.defaultdict(list)
    for f in files:
        for candidate in id_candidates(f.stem):
            if candidate in wanted:
                matches[candidate].append(f)
                break
    return matches


class AudioCaps(builder_base.AudioDatasetBuilder):
    name = "audiocaps"
    SPLITS = SPLITS
    DESCRIPTION = "AudioCaps: human-written captions for 10 s AudioSet segments (audio downloaded by the user)."
    HOMEPAGE = "https://audiocaps.github.io/"
    CITATION = (
        "@inproceedings{kim2019audiocaps, title={{AudioCaps}: Generating Captions for Audios in the Wild}, "
        "author={Kim, Chris Dongjoo and Kim, Byeongchang and Lee, Hyunmin and Kim, Gunhee}, "
        "booktitle={NAACL-HLT}, year={2019}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train.csv, val.csv and test.csv from https://github.com/cdjkim/audiocaps/tree/master/dataset "
        "and the audio you downloaded (named by YouTube id, in one folder or one per split) in one "
        "folder and pass it as --manual_dir."
    )

    def _features(self):
        return {"captions": tfds.features.Sequence(tfds.features.Text())}

    def _read_release(self, manual_dir: Path, report: builder_base.Report):
        tables = {split: builder_base.find_release_file(manual_dir, f"{split}.csv") for split in SPLITS}
        grouped: dict[str, dict[str, list[dict]]] = {}
        for split, table in tables.items():
            by_id: dict[str, list[dict]] = collections.OrderedDict()
            for row in builder_base.read_table(table, COLUMNS):
                by_id.setdefault(row["youtube_id"], []).append(row)
            grouped[split] = by_id

        index = builder_base.AudioIndex(manual_dir)
        wanted = {ytid for by_id in grouped.values() for ytid in by_id}
        matches = match_files(index.files, wanted)
        log.info("audiocaps: %d audio files below %s name %d of the %d clips",
                 len(index.files), manual_dir, len(matches), len(wanted))

        clips = {}
        for split, by_id in grouped.items():
            split_clips = []
            for ytid, rows in by_id.items():
                if len({row["start_time"] for row in rows}) > 1:
                    report.note(split, "clips listed with several start times (grouped by youtube_id)")
                captions = builder_base.clean_captions((row["caption"] for row in rows), split, report)
                if not captions:
                    report.skip(split, ytid, "no captions")
                    continue
                split_clips.append(
                    builder_base.Clip(
                        id=ytid,
                        path=index.choose(matches.get(ytid, []), SPLIT_DIRS[split]),
                        features={"captions": captions},
                        expected=f"{ytid}.wav (or Y{ytid}.*, {ytid}_{rows[0]['start_time']}.*) below {manual_dir}",
                    )
                )
            clips[split] = split_clips
        return clips
