"""The int8 codes of an index's window embeddings, and the score bounds they give.

Each stored row x gets per-row symmetric int8 codes and a scale, plus a bound on
|x.q - scale * codes.q| / |q| that holds for every query q. A search reads 1 byte per
dimension instead of 2 or 4 and still finds the exact top files: a row whose upper bound
falls below a lower bound already reached cannot be among them, and the rest are rescored
from the stored vectors.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

# Below this many code elements numpy beats paying numba's compile time.
_NUMBA_MIN_ELEMENTS = 1 << 24
_SCAN_LOCK = threading.Lock()  # numba's default thread pool must not be entered twice


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row symmetric int8 codes of `vectors` [n, d] -> (codes, scale, bound).

    `bound` [n] is a safe upper bound on |x.q - scale * (codes.q)| / |q|_2 for every q:
    the residual's L2 norm (Cauchy-Schwarz) plus the float32 rounding error that computing
    either dot product can add (|fl(x.y) - x.y| <= gamma_d |x||y|, gamma_d ~ d * 2^-24;
    taken 3x for the two dot products and the scaling), rounded up.
    """
    x = np.asarray(vectors, np.float32)
    d = x.shape[1]
    peak = np.abs(x).max(axis=1)
    scale = (peak / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    x64 = x.astype(np.float64)
    residual = np.linalg.norm(x64 - scale[:, None].astype(np.float64) * codes, axis=1)
    rounding = 3.0 * d * 2.0**-24 * np.linalg.norm(x64, axis=1)
    bound = np.nextafter((residual + rounding).astype(np.float32), np.float32(np.inf))
    return codes, scale, bound


@functools.cache
def _numba_kernel():
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(parallel=True, fastmath=True, nogil=True, cache=False)
    def int8_bounds(codes, q, scale, slack, lower, upper):
        n, d = codes.shape
        for i in numba.prange(n):
            acc = np.float32(0.0)
            for j in range(d):
                acc += np.float32(codes[i, j]) * q[j]
            approx = acc * scale[i]
            lower[i] = approx - slack[i]
            upper[i] = approx + slack[i]

    return int8_bounds


def _warm_up() -> None:
    """Compiles the numba kernel now (~1 s) rather than in the first query."""
    kernel = _numba_kernel()
    if kernel is not None:
        one = np.ones(1, np.float32)
        with _SCAN_LOCK:
            kernel(np.zeros((1, 1), np.int8), one, one, one, np.empty(1, np.float32),
                   np.empty(1, np.float32))



def warm_up_for(codes: np.ndarray) -> None:
    """Compiles the numba kernel now if a scan of `codes` would use it."""
    if codes.size >= _NUMBA_MIN_ELEMENTS:
        _warm_up()


def int8_bounds(codes: np.ndarray, scale: np.ndarray, bound: np.ndarray,
                q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds [n] on the stored rows' scores against q [d].

    approx = scale * (codes @ q); the true score lies within bound * |q| of it.

    numpy has no int8 BLAS and casting the codes to float32 costs more than the product, so
    a fused numba loop that reads the codes once is used when numba is installed and the
    index is big. Otherwise einsum casts in small buffers on one thread, since threaded
    BLAS slows down on cores shared with other work (timings: docs/search.md).
    """
    n, _ = codes.shape
    q = np.ascontiguousarray(q, np.float32)
    slack = bound * np.float32(np.linalg.norm(q))
    lower, upper = np.empty(n, np.float32), np.empty(n, np.float32)
    kernel = _numba_kernel() if codes.size >= _NUMBA_MIN_ELEMENTS else None
    if kernel is not None:
        with _SCAN_LOCK:
            kernel(np.asarray(codes), q, scale, slack, lower, upper)
        return lower, upper
    approx = np.empty(n, np.float32)
    if n:
        np.einsum("ij,j->i", codes, q, dtype=np.float32, casting="unsafe", out=approx)
    approx *= scale
    np.subtract(approx, slack, out=lower)
    np.add(approx, slack, out=upper)
    return lower, upper
