"""The identity of the model that filled an index: its embeddings of fixed probes.

The same model gives (nearly) the same embeddings of the probes on any device and in any
precision, a different one does not. An index records them when it is created, and a model
that is to search it (or add to it) must embed them alike.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from atjax.search.errors import ModelMismatchError

PROBE_TEXTS = ("a dog barks in the distance", "rain falls on a metal roof then thunder rumbles")
# Cosine 0.995 allows bfloat16 compute and CPU/GPU differences but no retraining.
PROBE_MIN_COSINE = 0.995


def probe_audio(sample_rate: int, seconds: float) -> np.ndarray:
    """A fixed [1, n] test signal: a few partials, a sweep and seeded noise."""
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n) / sample_rate
    wave = (0.2 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * np.sin(2 * np.pi * 1250.0 * t)
            + 0.1 * np.sin(2 * np.pi * (100.0 + 400.0 * t / max(seconds, 1e-3)) * t))
    wave += 0.02 * np.random.default_rng(1234).standard_normal(n)
    return wave.astype(np.float32)[None]


def model_fingerprint(model, *, window_seconds: float, towers: Sequence[str]) -> dict:
    """The model's embeddings of the probes, per tower ("audio", "text")."""
    out = {}
    if "text" in towers:
        out["text"] = np.asarray(model.embed_text(list(PROBE_TEXTS)), np.float32).tolist()
    if "audio" in towers:
        wave = probe_audio(int(model.sample_rate), window_seconds)
        out["audio"] = np.asarray(model.embed_audio(wave, int(model.sample_rate)),
                                  np.float32).tolist()
    return out


def model_record(model, *, bundle: str | None, window_seconds: float) -> dict:
    """What the index stores about the model that filled it."""
    return {
        "bundle": None if bundle is None else os.path.abspath(bundle),
        "sample_rate": int(model.sample_rate),
        "fingerprint": model_fingerprint(model, window_seconds=window_seconds,
                                         towers=("audio", "text")),
    }



def check_model(record: dict, model, *, where, window_seconds: float,
                towers: Sequence[str] = ("audio", "text")) -> None:
    """Raises ModelMismatchError unless `model` embeds like the model of `record` (as made
    by `model_record`); `where` names the index in the message."""
    if int(model.sample_rate) != record["sample_rate"]:
        raise ModelMismatchError(
            f"{where} was built by a model at {record['sample_rate']} Hz; the model "
            f"given runs at {model.sample_rate} Hz")
    theirs = model_fingerprint(model, window_seconds=window_seconds,
                               towers=[t for t in towers if t in record["fingerprint"]])
    for tower, got in theirs.items():
        want = np.asarray(record["fingerprint"][tower], np.float32)
        got = np.asarray(got, np.float32)
        if got.shape != want.shape:
            raise ModelMismatchError(
                f"{where} holds {want.shape[-1]}-dim embeddings; the model given "
                f"makes {got.shape[-1]}-dim ones")
        cos = np.sum(want * got, -1) / (np.linalg.norm(want, axis=-1)
                                         * np.linalg.norm(got, axis=-1) + 1e-12)
        if np.min(cos) < PROBE_MIN_COSINE:
            built_by = record.get("bundle") or "another model"
            raise ModelMismatchError(
                f"{where} was built by {built_by}; the model given embeds the "
                f"{tower} probes differently (cosine {np.min(cos):.3f} < "
                f"{PROBE_MIN_COSINE}). Build a new index for this model.")
