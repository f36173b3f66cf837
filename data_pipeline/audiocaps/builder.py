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

Releases: the repository's `dataset/` is AudioCaps 1.0, the paper's (`audiocaps`);
`dataset2.0/` is AudioCaps 2.0 (`audiocaps_2`), the same columns over another set of
clips. Each builder reads its own folder's CSVs when the manual dir holds both (a clone of
the repository), and says so in a log line; CSVs outside either folder are read by either
builder, and the other release's folder alone is an error naming it.
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
# The folder of each release's CSVs in the AudioCaps repository, and its builder's name.
RELEASE_FOLDERS = {"1.0": "dataset", "2.0": "dataset2.0"}
RELEASE_NAMES = {"1.0": "audiocaps", "2.0": "audiocaps_2"}


def find_tables(manual_dir: Path, release: str) -> dict[str, Path]:
    """split -> the CSV of that split of `release`, "1.0" or "2.0"."""
    folder = RELEASE_FOLDERS[release]
    others = {f: r for r, f in RELEASE_FOLDERS.items() if r != release}
    tables, several = {}, False
    for split in SPLITS:
        relpath = f"{split}.csv"
        direct = Path(manual_dir) / relpath
        candidates = [direct] if direct.is_file() else builder_base.find_release_files(manual_dir, relpath)
        if not candidates:
            builder_base.find_release_file(manual_dir, relpath)  # raises the LayoutError naming it
        mine = [c for c in candidates if c.parent.name == folder]
        several = several or len(candidates) > 1
        if len(candidates) == 1 and candidates[0].parent.name in others:
            other = others[candidates[0].parent.name]
            raise builder_base.LayoutError(
                f"expected release file {Path(manual_dir) / folder / relpath}; found only "
                f"{candidates[0]}, which is AudioCaps {other} (prepare it as {RELEASE_NAMES[other]})")
        if len(candidates) == 1:
            tables[split] = candidates[0]
        elif len(mine) == 1:
            tables[split] = mine[0]
        else:
            raise builder_base.LayoutError(
                f"found several copies of {relpath} below {manual_dir}: "
                + ", ".join(str(c) for c in candidates) + "; point --manual_dir at the one release to use")
    if several:
        log.info("%s: %s holds several AudioCaps releases; reading AudioCaps %s%s from %s",
                 RELEASE_NAMES[release], manual_dir, release, " (the paper's)" if release == "1.0" else "",
                 ", ".join(sorted({str(t.parent) for t in tables.values()})))
    return tables


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
    RELEASE = "1.0"
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
        tables = find_tables(manual_dir, self.RELEASE)
        grouped: dict[str, dict[str, list[dict]]] = {}
        for split, table in tables.items():
            by_id: dict[str, list[dict]] = collections.OrderedDict()
            for row in builder_base.read_table(table, COLUMNS):
                by_id.setdefault(row["youtube_id"], []).append(row)
            grouped[split] = by_id

        index = builder_base.AudioIndex(manual_dir)
        wanted = {ytid for by_id in grouped.values() for ytid in by_id}
        matches = match_files(index.files, wanted)
        log.info("%s: %d audio files below %s name %d of the %d clips",
                 self.name, len(index.files), manual_dir, len(matches), len(wanted))

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


class AudioCaps2(AudioCaps):
    name = "audiocaps_2"
    RELEASE = "2.0"
    DESCRIPTION = ("AudioCaps 2.0: human-written captions for 10 s AudioSet segments, a larger set than "
                   "AudioCaps 1.0 (audio downloaded by the user).")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train.csv, val.csv and test.csv from https://github.com/cdjkim/audiocaps/tree/master/dataset2.0 "
        "(or a clone of that repository) and the audio you downloaded (named by YouTube id, in one folder "
        "or one per split) in one folder and pass it as --manual_dir."
    )
