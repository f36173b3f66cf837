"""TFDS builder for the DCASE 2022 task 6B retrieval evaluation set (Zenodo 6590983).

The public release holds `retrieval_captions.csv` (one column, `caption`: the 1,000
queries), `retrieval_audio_metadata.csv` (file_name, keywords, sound_id, sound_link,
start_end_samples, manufacturer, license: the 1,000 candidate clips) and
`retrieval_audio.7z`, which unpacks to `test/` (15-30 s, 44.1 kHz wav). It does not say
which clip each query describes: the challenge scored submissions against a ground truth
the organisers kept. So that pairing is an extra input of this builder, required because
retrieval cannot be scored without it:

- a CSV next to the release files whose name contains "ground_truth" (for example
  `retrieval_ground_truth.csv`) or ends in ".gt.csv", with columns `caption,file_name`
  (one row per query) or Clotho's `file_name,caption_1[,caption_2..]`; or
- `retrieval_captions.csv` itself carrying a `file_name` column beside `caption`.

Each element is one clip with the queries that describe it; clips no query describes are
kept with no captions, as retrieval candidates. Queries in retrieval_captions.csv without
a ground-truth row, and ground-truth captions that are not queries, are counted and logged.
One split, "test".

The release's metadata spells a few file names with ":" where the unpacked audio file has
"_" (`raindrops on metal: police background.wav`): a name whose file is missing is looked
up with "_" for ":" as well, and ground-truth rows may use either spelling. The element id
stays the metadata's spelling.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import tensorflow_datasets as tfds

from data_pipeline import builder_base
from data_pipeline.clotho.builder import caption_columns

log = logging.getLogger(__name__)

QUERIES = "retrieval_captions.csv"
METADATA = "retrieval_audio_metadata.csv"
AUDIO_DIRS = ("test", "retrieval_audio")


def file_spelling(name: str) -> str:
    """The name the audio file has on disk for a metadata name ("a: b.wav" -> "a_ b.wav")."""
    return name.replace(":", "_")


def _is_ground_truth_name(name: str) -> bool:
    lowered = name.lower()
    named = "ground_truth" in lowered or "groundtruth" in lowered or lowered.endswith(".gt.csv")
    return lowered.endswith(".csv") and named


def find_ground_truth(root: Path) -> Path | None:
    """The one ground-truth CSV in `root` (None if there is none; an error if several)."""
    found = sorted(p for p in root.iterdir() if p.is_file() and _is_ground_truth_name(p.name))
    if len(found) > 1:
        raise ValueError(f"several ground-truth files in {root}: {', '.join(p.name for p in found)}; keep one")
    return found[0] if found else None


def read_ground_truth(path: Path) -> list[tuple[str, str]]:
    """(caption, file_name) pairs from either accepted format."""
    rows = builder_base.read_table(path, ("file_name",))
    header = list(rows[0].keys()) if rows else []
    if "caption" in header:
        return [(row["caption"], row["file_name"]) for row in rows]
    columns = caption_columns(header, path)
    return [(row[c], row["file_name"]) for row in rows for c in columns]


class Clotho2022(builder_base.AudioDatasetBuilder):
    name = "clotho_2022"
    SPLITS = ("test",)
    DESCRIPTION = (
        "DCASE 2022 task 6B language-based audio retrieval evaluation set: 1,000 Freesound clips "
        "(15-30 s) and 1,000 caption queries, paired by the organisers' ground truth."
    )
    HOMEPAGE = "https://zenodo.org/record/6590983"
    CITATION = (
        "@inproceedings{xie2022language, title={Language-Based Audio Retrieval Task in {DCASE} 2022 "
        "Challenge}, author={Xie, Huang and Lipping, Samuel and Virtanen, Tuomas}, "
        "booktitle={DCASE Workshop}, year={2022}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download retrieval_captions.csv, retrieval_audio_metadata.csv and retrieval_audio.7z from "
        "https://zenodo.org/record/6590983, unpack the archive next to the CSV files (giving test/), "
        "add the ground truth as retrieval_ground_truth.csv (columns caption,file_name), and pass "
        "that folder as --manual_dir."
    )

    def _features(self):
        return {"captions": tfds.features.Sequence(tfds.features.Text())}

    def _read_release(self, manual_dir: Path, report: builder_base.Report):
        queries_file = builder_base.find_release_file(manual_dir, QUERIES)
        root = queries_file.parent
        meta_file = builder_base.find_release_file(manual_dir, METADATA)
        query_rows = builder_base.read_table(queries_file, ("caption",))
        clip_names = [row["file_name"] for row in builder_base.read_table(meta_file, ("file_name",))]

        if query_rows and "file_name" in query_rows[0]:
            pairs = [(row["caption"], row["file_name"]) for row in query_rows]
            source = queries_file
        else:
            source = find_ground_truth(root)
            if source is None:
                raise builder_base.LayoutError(
                    f"{queries_file} lists the queries without the clip each one describes, and no "
                    f"ground-truth file was found in {root}. Add it as {root / 'retrieval_ground_truth.csv'} "
                    "with columns caption,file_name (or Clotho's file_name,caption_1,...), or add a "
                    f"file_name column to {QUERIES}."
                )
            pairs = read_ground_truth(source)
        log.info("clotho_2022: ground truth from %s", source)

        queries = collections.Counter(row["caption"].strip() for row in query_rows if row["caption"].strip())
        by_clip: dict[str, list[str]] = collections.OrderedDict((name, []) for name in clip_names)
        # The metadata name for each on-disk spelling, so ground-truth rows match either.
        spellings = {file_spelling(name): name for name in clip_names}
        paired = collections.Counter()
        for caption, name in pairs:
            caption = caption.strip()
            if not caption:
                report.note("test", "empty captions dropped")
                continue
            if caption not in queries:
                report.note("test", "ground-truth captions that are not queries (kept)")
            if name not in by_clip and file_spelling(name) in spellings:
                name = spellings[file_spelling(name)]
            if name not in by_clip:
                report.note("test", "ground-truth clips not in retrieval_audio_metadata.csv (kept)")
            by_clip.setdefault(name, []).append(caption)
            paired[caption] += 1
        unpaired = sum(max(0, n - paired[q]) for q, n in queries.items())
        report.note("test", "queries without ground truth (left out)", unpaired)
        report.note("test", "clips no query describes (kept as retrieval candidates)",
                    sum(1 for caps in by_clip.values() if not caps))
        if unpaired:
            log.warning("clotho_2022: %d queries of %s have no ground-truth row in %s", unpaired, queries_file, source)

        index = builder_base.AudioIndex(manual_dir)
        clips = []
        for name, captions in by_clip.items():
            expected = root / "test" / name
            path = index.find(name, expected=expected, split_dirs=AUDIO_DIRS)
            if path is None and file_spelling(name) != name:
                path = index.find(file_spelling(name), expected=root / "test" / file_spelling(name),
                                  split_dirs=AUDIO_DIRS)
                if path is not None:
                    report.note("test", "file names matched with '_' for ':'")
            clips.append(
                builder_base.Clip(
                    id=name,
                    path=path,
                    features={"captions": captions},
                    expected=str(expected),
                )
            )
        return {"test": clips}
