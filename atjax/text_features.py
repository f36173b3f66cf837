"""Token features of a frozen text encoder, computed once per distinct caption.

With `model.text.freeze` the text encoder is a fixed function: a caption's token features
(its last hidden states) are the same at every step. A training step then need not run the
encoder at all. `FeatureCache` runs the frozen encoder in eval mode (no dropout) on the
captions of a batch that it has not seen, keeps the features of up to `capacity` distinct
captions on the host (the least recently used leave first), and hands the step
`text_features` in place of the token ids; the Agg/Proj head on top still trains. A corpus
with a bounded caption set (the built-in synthetic corpus, or a dataset's own captions)
pays for each caption's forward pass once; on-the-fly captions (ACBA joins) are computed
when first drawn, as the uncached step would.

Caches of the same weights share their features within a process (the runs of
`atjax.ordering_study` all start from the same frozen MiniLM), so a later run reuses what an
earlier one computed.

Setting: `model.text.feature_cache` (captions kept; 0 runs the frozen encoder in every
step, with dropout as in training).
"""

from __future__ import annotations

import collections
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# Features by weights digest: caches of identical frozen encoders share what they computed.
_SHARED: dict[str, collections.OrderedDict] = {}


def weights_digest(state) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class FeatureCache:
    """`cache(batch)`: a host batch with `text_features` `[B, L, H]` in place of `input_ids`.

    `encoder` is the frozen text encoder (an nnx module; its weights are read once, here).
    Misses are computed `bucket` captions at a time (padded, so one compiled shape serves).
    """

    def __init__(self, encoder: nnx.Module, *, capacity: int, bucket: int,
                 dtype=np.float32):
        if capacity < 1 or bucket < 1:
            raise ValueError(f"capacity and bucket must be >= 1, got {capacity}, {bucket}")
        encoder = nnx.clone(encoder)
        encoder.eval()
        graphdef, state = nnx.split(encoder)
        # A copy through the host: the training step donates (and so deletes) the buffers
        # of the state these weights were read from.
        self._state = jax.device_put(jax.device_get(state), jax.local_devices()[0])
        self.digest = weights_digest(jax.device_get(nnx.state(encoder, nnx.Param)))
        self._forward = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask))
        self.capacity = int(capacity)
        self.bucket = int(bucket)
        self.dtype = np.dtype(dtype)
        self._store: collections.OrderedDict[bytes, np.ndarray] = _SHARED.setdefault(
            f"{self.digest}:{self.dtype}", collections.OrderedDict())
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def _key(ids: np.ndarray, mask: np.ndarray) -> bytes:
        length = int(mask.sum())
        return np.asarray(ids[:length], np.int32).tobytes()

    def _compute(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        n = ids.shape[0]
        out = []
        for start in range(0, n, self.bucket):
            part_ids, part_mask = ids[start:start + self.bucket], mask[start:start + self.bucket]
            pad = self.bucket - part_ids.shape[0]
            if pad:  # padding rows are one token long, so attention stays finite
                part_ids = np.concatenate([part_ids, np.repeat(part_ids[:1], pad, 0)])
                part_mask = np.concatenate([part_mask, np.repeat(part_mask[:1], pad, 0)])
            hidden = self._forward(self._state, jnp.asarray(part_ids), jnp.asarray(part_mask))
            out.append(np.asarray(hidden, self.dtype)[:self.bucket - pad])
        return np.concatenate(out)

    def features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """`[B, L]` token ids and mask -> `[B, L, H]` features (zeros on padding)."""
        input_ids = np.asarray(input_ids)
        attention_mask = np.asarray(attention_mask)
        keys = [self._key(i, m) for i, m in zip(input_ids, attention_mask)]
        missing = {}
        for row, key in enumerate(keys):
            if key not in self._store and key not in missing:
                missing[key] = row
        if missing:
            rows = list(missing.values())
            computed = self._compute(input_ids[rows], attention_mask[rows])
            for key, row, hidden in zip(missing, rows, computed):
                length = int(attention_mask[row].sum())
                self._store[key] = hidden[:length]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        length = input_ids.shape[1]
        first = self._store[keys[0]]
        out = np.zeros((len(keys), length, first.shape[-1]), self.dtype)
        for row, key in enumerate(keys):
            hidden = self._store[key]
            self._store.move_to_end(key)
            out[row, :hidden.shape[0]] = hidden
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        ids = batch.pop("input_ids")
        batch["text_features"] = self.features(ids, batch["attention_mask"])
        return batch
