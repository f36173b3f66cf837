"""Prepare a dataset once, at the model's sample rate:

    python -m data_pipeline.prepare NAME --manual_dir DIR --data_dir DIR [--sample_rate 32000]

NAME is one of data_pipeline.datasets.NAMES; --manual_dir is the folder holding the
release as downloaded (not needed for synthetic_events). The result lands in
DATA_DIR/NAME/<rate>hz/<version>/, with skipped.json listing every clip that was missing,
could not be decoded or was too short to give one sample at the rate. TFDS's own
`tfds build` command needs apache-beam in TFDS 4.9.10, so this calls the builder's Python
API instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from data_pipeline import datasets

from atjax import console

log = logging.getLogger("data_pipeline.prepare")


def prepare(
    name: str,
    *,
    data_dir: str,
    manual_dir: str | None = None,
    sample_rate: int = 32000,
    workers: int | None = None,
    overwrite: bool = False,
):
    """Prepares `name` and returns its builder (already-prepared data is kept unless `overwrite`)."""
    import tensorflow_datasets as tfds

    b = datasets.builder(name, data_dir, sample_rate)
    if b.is_prepared() and not overwrite:
        log.info("%s is already prepared in %s (pass --overwrite to rebuild)", name, b.data_path)
        return b
    if name not in datasets.PROCEDURAL:
        if manual_dir is None:
            raise ValueError(f"{name} is read from its release: pass --manual_dir, the folder holding it")
        if not Path(manual_dir).is_dir():
            raise FileNotFoundError(f"--manual_dir {manual_dir} is not a directory")
    if workers is not None:
        b.decode_workers = workers
    mode = tfds.download.GenerateMode
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(Path(manual_dir).resolve()),
        download_mode=mode.FORCE_REDOWNLOAD if overwrite else mode.REUSE_DATASET_IF_EXISTS,
    )
    start = time.time()
    b.download_and_prepare(download_config=config)
    sizes = ", ".join(f"{s}: {info.num_examples}" for s, info in b.info.splits.items())
    log.info("%s prepared in %.1f s at %d Hz -> %s (%s)", name, time.time() - start, sample_rate, b.data_path, sizes)
    return b


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.prepare",
        description="Decode, resample and store a dataset release as a TFDS dataset.",
    )
    parser.add_argument("name", choices=datasets.NAMES)
    parser.add_argument("--manual_dir", help="folder holding the release as downloaded")
    parser.add_argument("--data_dir", required=True, help="where prepared datasets live")
    parser.add_argument("--sample_rate", type=int, default=32000, help="the model's sample rate (Hz)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: cores, at most 8)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an already prepared dataset")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    console.setup(args.verbose)
    try:
        prepare(
            args.name,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            sample_rate=args.sample_rate,
            workers=args.workers,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
