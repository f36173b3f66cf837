"""`python -m data_pipeline.acba write`: materialises a fixed ACBA set (the paper's 50k
pairs) from the training pipeline's own ACBA stream, in the layout of
`data_pipeline.acba.stored`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
from typing import Sequence

from atjax import console
from data_pipeline import acba
from data_pipeline.acba import pairs
from data_pipeline.acba.stored import AUDIO_DIR, CSV_COLUMNS, CSV_NAME, META_NAME

log = logging.getLogger(__name__)


def write(*, source: str, data_dir: str, out: str, count: int, seed: int = 0,
          sample_rate: int = 32000, crossfade_seconds: float = 1.0,
          clip_seconds: float | None = 10.0) -> str:
    """Writes `count` ACBA pairs drawn from `source` (a `name:split[+...]` spec) to `out`:
    `out/audio/acba_000000.wav` ... (int16 mono) and `out/acba.csv` with the columns
    file_name, caption, first_id, second_id, preposition, plus `out/acba.json` (settings).

    The pairs are the training pipeline's own ACBA stream (same pool, crops and fades);
    `clip_seconds=None` keeps both clips whole, like the authors' set (without their
    zero-padding to 20 s). Returns the CSV path.
    """
    import soundfile
    from tqdm import tqdm

    from data_pipeline import audio as audio_lib

    if count <= 0:
        raise ValueError(f"--count must be positive, got {count}")
    clip_samples = None if clip_seconds is None else int(round(clip_seconds * sample_rate))
    stream = pairs.acba_stream(source, data_dir=data_dir, sample_rate=sample_rate,
                                  clip_samples=clip_samples, crossfade_seconds=crossfade_seconds,
                                  seed=seed)
    os.makedirs(os.path.join(out, AUDIO_DIR), exist_ok=True)
    csv_path = os.path.join(out, CSV_NAME)
    width = max(6, len(str(count - 1)))
    tmp_csv = csv_path + ".tmp"
    start = time.time()
    with open(tmp_csv, "w", newline="", encoding="utf-8") as f:
        rows = csv.writer(f)
        rows.writerow(CSV_COLUMNS)
        for i, ex in enumerate(tqdm(stream.take(count).as_numpy_iterator(), total=count,
                                    desc="ACBA", unit="pair", mininterval=2.0)):
            file_name = f"acba_{i:0{width}d}.wav"
            soundfile.write(os.path.join(out, AUDIO_DIR, file_name), audio_lib.to_pcm16(ex["audio"]),
                            sample_rate, subtype="PCM_16")
            rows.writerow([file_name, ex["text"].decode(), ex["first_id"].decode(),
                           ex["second_id"].decode(), acba.PREPOSITIONS[int(ex["preposition"])]])
    os.replace(tmp_csv, csv_path)
    meta = dict(source=source if isinstance(source, str) else "(datasets passed in Python)", count=count,
                seed=seed, sample_rate=sample_rate, crossfade_seconds=crossfade_seconds, clip_seconds=clip_seconds)
    with open(os.path.join(out, META_NAME), "w") as f:
        json.dump(meta, f, indent=1)
    log.info("wrote %d ACBA pairs to %s in %.0f s", count, out, time.time() - start)
    return csv_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.acba",
                                     description=acba.__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="materialise a fixed ACBA set (wav files + acba.csv)")
    w.add_argument("--source", default="audiocaps:train", help="pool: name:split[+name:split...]")
    w.add_argument("--data_dir", required=True, help="where the pool dataset is prepared")
    w.add_argument("--out", required=True)
    w.add_argument("--count", type=int, default=50000)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--sample_rate", type=int, default=32000)
    w.add_argument("--crossfade_seconds", type=float, default=1.0)
    w.add_argument("--clip_seconds", type=float, default=10.0,
                   help="length of each pair (parts cropped to fit); 0 keeps both clips whole")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    console.setup(args.verbose)
    path = write(source=args.source, data_dir=args.data_dir, out=args.out, count=args.count,
                 seed=args.seed, sample_rate=args.sample_rate, crossfade_seconds=args.crossfade_seconds,
                 clip_seconds=args.clip_seconds or None)
    print(path)
