"""In-memory training input with the TrainInput interface, for tests and benchmarks.

Batches are a pure function of (seed, host, batch index): deterministic, resumable, and
split across hosts like the real pipeline (each host draws its own slice of every global
batch), so multi-device and multi-host runs can be compared with single-device ones.
"""

from __future__ import annotations

import numpy as np


class ArrayInput:
    def __init__(self, *, batch_size: int, clip_samples: int, tokenizer, seed: int,
                 process_index: int = 0, process_count: int = 1, captions=None, **unused):
        self.batch_size = batch_size
        self.clip_samples = clip_samples
        self.tokenizer = tokenizer
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.captions = captions or ["a dog barks", "rain falls on a roof", "a car passes by",
                                     "birds chirp then a door closes", "a bell rings twice"]
        self.position = 0

    def _global_batch(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        b = self.batch_size * self.process_count
        t = np.arange(self.clip_samples) / 16000.0
        freqs = rng.uniform(200, 3000, (b, 1))
        audio = (0.3 * np.sin(2 * np.pi * freqs * t[None])
                 + 0.05 * rng.standard_normal((b, self.clip_samples))).astype(np.float32)
        texts = [self.captions[i] for i in rng.integers(0, len(self.captions), b)]
        tokens = self.tokenizer(texts)
        return {"audio": audio, **{k: np.asarray(v) for k, v in tokens.items()}}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._global_batch(self.position)
        self.position += 1
        lo = self.process_index * self.batch_size
        return {k: v[lo:lo + self.batch_size] for k, v in batch.items()}

    def get_state(self) -> dict:
        # Like the real pipeline's, a position belongs to one host's share of the data.
        return {"position": self.position, "process_index": self.process_index}

    def set_state(self, state: dict) -> None:
        saved = state.get("process_index", self.process_index)
        if saved != self.process_index:
            raise ValueError(f"the saved input position is process {saved}'s, not process "
                             f"{self.process_index}'s")
        self.position = int(state["position"])
