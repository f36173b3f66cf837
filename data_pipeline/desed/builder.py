"""TFDS builder for the DESED public evaluation set (DCASE 2019-2021 task 4).

Layout: `metadata/eval/public.tsv` (tab separated: filename, onset, offset, event_label,
in seconds) and `audio/eval/public/<filename>` (10 s wav). A clip without events appears
in public.tsv with empty onset/offset/label; it is kept with an empty event list. A wav
in audio/eval/public/ that public.tsv does not mention at all is kept too, with no events
(logged and counted), since the evaluation scores every clip of the set. One split, "eval" (the
release's own name for it: metadata/eval/, audio/eval/).
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import builder_base

log = logging.getLogger(__name__)

METADATA = "metadata/eval/public.tsv"
AUDIO_DIR = "audio/eval/public"
CLASSES = (
    "Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog", "Electric_shaver_toothbrush",
    "Frying", "Running_water", "Speech", "Vacuum_cleaner",
)  # fmt: skip


class Desed(builder_base.AudioDatasetBuilder):
    name = "desed"
    SPLITS = ("eval",)
    DESCRIPTION = "DESED public evaluation set: 10 s domestic recordings with onset/offset event labels, 10 classes."
    HOMEPAGE = "https://project.inria.fr/desed/"
    CITATION = (
        "@inproceedings{turpault2019sound, title={Sound event detection in domestic environments with "
        "weakly labeled data and soundscape synthesis}, author={Turpault, Nicolas and Serizel, Romain and "
        "Parag Shah, Ankit and Salamon, Justin}, booktitle={DCASE Workshop}, year={2019}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Get the DESED public evaluation set (https://project.inria.fr/desed/, or the DESED zenodo "
        "records) and pass the folder holding metadata/eval/public.tsv and audio/eval/public/ as --manual_dir."
    )

    def _features(self):
        return {
            "events": tfds.features.Sequence(
                {
                    "onset": tfds.features.Scalar(np.float32),
                    "offset": tfds.features.Scalar(np.float32),
                    "label": tfds.features.Text(),
                }
            )
        }

    def _read_release(self, manual_dir: Path, report: builder_base.Report):
        meta = builder_base.find_release_file(manual_dir, METADATA)
        root = builder_base.release_root(meta, METADATA)
        events: dict[str, list[dict]] = collections.OrderedDict()
        rows = builder_base.read_table(meta, ("filename", "onset", "offset", "event_label"), "\t")
        for line, row in enumerate(rows, 2):
            clip_events = events.setdefault(row["filename"], [])
            fields = (row["onset"], row["offset"], row["event_label"])
            if not any(fields):
                continue  # the row of a clip without events
            if not all(fields):
                raise ValueError(f"{meta} line {line}: onset, offset and event_label must all be given or all empty")
            try:
                onset, offset = float(row["onset"]), float(row["offset"])
            except ValueError as e:
                raise ValueError(f"{meta} line {line}: {e}") from e
            if offset <= onset:
                report.note("eval", "events with offset <= onset dropped")
                continue
            if row["event_label"] not in CLASSES:
                report.note("eval", "events with a label outside the 10 DESED classes (kept)")
            clip_events.append({"onset": onset, "offset": offset, "label": row["event_label"]})

        audio_dir = root / AUDIO_DIR
        index = builder_base.AudioIndex(manual_dir)
        if audio_dir.is_dir():
            unlisted = sorted(p.name for p in audio_dir.iterdir()
                              if p.suffix.lower() in builder_base.AUDIO_EXTENSIONS and p.name not in events)
            for name in unlisted:
                events[name] = []
            if unlisted:
                report.note("eval", "clips in the audio folder without rows in public.tsv (kept, no events)",
                            len(unlisted))
                log.warning("desed: %d wav files in %s have no rows in %s; kept with no events",
                            len(unlisted), audio_dir, meta)
        clips = [
            builder_base.Clip(
                id=name,
                path=index.find(name, expected=audio_dir / name, split_dirs=("public",)),
                features={"events": clip_events},
                expected=str(audio_dir / name),
            )
            for name, clip_events in events.items()
        ]
        return {"eval": clips}
