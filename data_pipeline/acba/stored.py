"""A fixed ACBA set on disk, as `python -m data_pipeline.acba write` leaves it: wav files
under `audio/`, one row per pair in `acba.csv` (file_name, caption, first_id, second_id,
preposition) and the settings in `acba.json`. `load_written` reads it back as a caption
source (the pipeline's source spec item `acba:DIRECTORY`).
"""

from __future__ import annotations

import csv
import json
import os

CSV_NAME = "acba.csv"
META_NAME = "acba.json"
AUDIO_DIR = "audio"
CSV_COLUMNS = ("file_name", "caption", "first_id", "second_id", "preposition")


def load_written(directory: str, sample_rate: int, clip_samples: int | None = None):
    """A set written by `writer.write`, as a tf.data.Dataset with the caption datasets' features
    ("id", "audio" int16, "captions"), in CSV order. The pipeline reads it for a source
    spec item `acba:DIRECTORY`, with `clip_samples` its training length: a set of longer
    pairs (or of whole clips) is refused, since the training crop would cut one of the two
    sounds off and leave a caption that states an order the audio no longer has."""
    import tensorflow as tf

    csv_path = os.path.join(directory, CSV_NAME)
    meta_path = os.path.join(directory, META_NAME)
    for path in (csv_path, meta_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"not an ACBA set written by `python -m data_pipeline.acba write`: {path} is missing")
    with open(meta_path) as f:
        meta = json.load(f)
    written_rate = meta.get("sample_rate")
    if written_rate != sample_rate:
        raise ValueError(f"ACBA set {directory} was written at {written_rate} Hz, the model needs "
                         f"{sample_rate} Hz; write it again with --sample_rate {sample_rate}")
    if clip_samples is not None:
        seconds = meta.get("clip_seconds")
        if seconds is None or int(round(seconds * sample_rate)) > clip_samples:
            held = "whole clips" if seconds is None else f"pairs of {seconds:g} s"
            raise ValueError(
                f"ACBA set {directory} holds {held}, longer than the {clip_samples / sample_rate:g} s "
                "that training crops to: the crop would cut one of the two sounds off; write it "
                f"again with --clip_seconds {clip_samples / sample_rate:g}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in CSV_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{csv_path}: no rows, or columns missing: {missing}")
    paths = [os.path.join(directory, AUDIO_DIR, r["file_name"]) for r in rows]
    absent = [p for p in paths if not os.path.isfile(p)]
    if absent:
        raise FileNotFoundError(f"{len(absent)} audio files listed in {csv_path} are missing, e.g. {absent[0]}")

    def read(path, caption, name):
        wav, _ = tf.audio.decode_wav(tf.io.read_file(path), desired_channels=1)
        # decode_wav divides int16 by 32768, so this restores the written samples exactly.
        pcm = tf.cast(tf.round(wav[:, 0] * 32768.0), tf.int16)
        return {"id": name, "audio": pcm, "captions": caption[tf.newaxis]}

    names = [os.path.splitext(r["file_name"])[0] for r in rows]
    return tf.data.Dataset.from_tensor_slices(
        (paths, [r["caption"] for r in rows], names)).map(read, num_parallel_calls=tf.data.AUTOTUNE)
