"""Embedding evaluation sets through the embedder protocol, in batches, with progress.

Clips of an evaluation set differ in length (Clotho: 15-30 s) while `embed_audio` takes a
`[B, N]` array. Clips are therefore batched by equal length: each clip waits in a group of
its length until the group holds `batch_size` clips, and when more than `max_buffered` clips
wait, every group is flushed as it is. Nothing is cropped or padded to a common length, so a
model with temporal pooling sees each clip exactly as it is; the only padding is the one the
model's chunking needs: for a model with `chunk_seconds` (the Transformer head) each clip is
padded with silence to a whole number of chunks, as in training. Memory stays bounded by
`max_buffered` clips whatever the size of the set.

A jitted model compiles one program per clip length, and Clotho's clips all differ in
length. `pad_seconds` > 0 trades exactness for speed: clips are padded with silence to a
whole multiple of it (rounded up to whole chunks for a chunked model), so that a set needs
a few dozen programs instead of one per clip. For the MLP head the padding is silence the
model did not see in the original clip (it shifts a temporally pooled embedding a little);
the Transformer head skips chunks of exact zeros, so for it only the rounding to whole chunks
matters. It is off by default and recorded in the settings when used.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from atjax.evaluate import data as data_lib


def chunk_samples(embedder, sample_rate: int) -> int | None:
    """Samples per chunk at `sample_rate` for a chunked model, else None."""
    seconds = getattr(embedder, "chunk_seconds", None)
    if not seconds:
        return None
    return max(1, int(round(float(seconds) * sample_rate)))


def pad_multiple(embedder, sample_rate: int, pad_seconds: float = 0.0) -> int | None:
    """The clip lengths are padded up to a multiple of this many samples (None: no padding)."""
    chunk = chunk_samples(embedder, sample_rate)
    if not pad_seconds:
        return chunk
    if pad_seconds < 0:
        raise ValueError(f"pad_seconds must be >= 0, got {pad_seconds}")
    multiple = max(1, int(round(pad_seconds * sample_rate)))
    return -(-multiple // chunk) * chunk if chunk else multiple


def pad_to_chunks(audio: np.ndarray, chunk: int | None) -> np.ndarray:
    if not chunk or audio.size % chunk == 0:
        return audio
    return np.pad(audio, (0, chunk - audio.size % chunk))


def checked(out, count: int, what: str) -> np.ndarray:
    """The embedder's output, checked for shape and finiteness, rows made unit-norm."""
    out = np.asarray(out)
    if out.ndim != 2 or out.shape[0] != count:
        raise ValueError(f"the embedder returned shape {out.shape} for {count} {what}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"the embedder returned non-finite {what} embeddings")
    # The protocol promises unit rows; normalising again costs nothing and makes every dot
    # product below a cosine even for an embedder that forgot.
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError(f"the embedder returned an all-zero {what} embedding")
    return (out / norm).astype(np.float32)


def embed_clips(embedder, clips: Iterable[np.ndarray], *, sample_rate: int,
                batch_size: int = 32, pad_seconds: float = 0.0,
                max_buffered: int | None = None, total: int | None = None,
                desc: str = "audio") -> np.ndarray:
    """`[N, D]` embeddings of 1-D clips (int16 PCM or float) at `sample_rate`, in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_buffered = max_buffered or 4 * batch_size
    multiple = pad_multiple(embedder, sample_rate, pad_seconds)
    rows: dict[int, np.ndarray] = {}
    groups: dict[int, list[tuple[int, np.ndarray]]] = {}
    buffered = 0
    bar = tqdm(total=total, desc=desc, unit="clip", mininterval=2.0)

    def flush(length: int) -> None:
        nonlocal buffered
        items = groups.pop(length)
        out = checked(embedder.embed_audio(np.stack([a for _, a in items]), sample_rate),
                       len(items), "audio")
        for (index, _), row in zip(items, out):
            rows[index] = row
        buffered -= len(items)
        bar.update(len(items))

    count = 0
    for index, clip in enumerate(clips):
        audio = data_lib.to_float(clip)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"clip {index} ({desc}) is empty or not mono: shape {audio.shape}")
        audio = pad_to_chunks(audio, multiple)
        groups.setdefault(audio.size, []).append((index, audio))
        buffered += 1
        count += 1
        if len(groups[audio.size]) >= batch_size:
            flush(audio.size)
        if buffered > max_buffered:
            for length in list(groups):
                flush(length)
    for length in list(groups):
        flush(length)
    bar.close()
    if count == 0:
        raise ValueError(f"no clips to embed ({desc})")
    return np.stack([rows[i] for i in range(count)])


def embed_texts(embedder, texts: Sequence[str], *, batch_size: int = 256,
                desc: str = "text") -> np.ndarray:
    """`[N, D]` embeddings of sentences, in batches."""
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text {i} ({desc}) is empty: {t!r}")
    if not texts:
        raise ValueError(f"no texts to embed ({desc})")
    out = []
    batches = math.ceil(len(texts) / batch_size)
    for b in tqdm(range(batches), desc=desc, unit="batch", mininterval=2.0,
                  disable=batches < 4):
        part = texts[b * batch_size:(b + 1) * batch_size]
        out.append(checked(embedder.embed_text(part), len(part), "text"))
    return np.concatenate(out)
