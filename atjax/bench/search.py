"""`python -m atjax.bench search --windows 1000000 --dim 1024`: search latency at scale.

Writes generated window embeddings into a real index (atjax.search.store) and times
the search of atjax.search on it, one JSON line per measurement:

  exact       the search the app runs: int8 scan with error bounds + exact rescoring
  brute       every stored vector scored in float32 (chunked BLAS over the memory map):
              the reference the exact search must equal, and what storing float16 or
              float32 costs when every row is read
  approximate (--approximate) the faiss IVF index: build time, latency, recall@k vs exact
              (measured on the first dtype only)

Embeddings are drawn with the structure real ones have: clusters of similar sounds, the
windows of one file close to each other, queries near a cluster but not on a window.
Latency is wall time per query (one query at a time), p50 and p95; the exact line also
gives the CPU time per query and the load average, since wall time on shared cores
depends on what else runs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from atjax.search import approximate
from atjax.search import exact
from atjax.search import query
from atjax.search import store
from atjax.bench import emit


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Generator:
    """Clustered unit vectors: cluster centre -> file -> window, each step adding noise."""

    def __init__(self, dim: int, clusters: int, seed: int):
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        self.centres = _normalize(self.rng.standard_normal((clusters, dim)))

    def _noise(self, n: int, scale: float) -> np.ndarray:
        # Norm ~ scale: N(0, 1/dim) per coordinate.
        return (scale / np.sqrt(self.dim)) * self.rng.standard_normal((n, self.dim),
                                                                      np.float32)

    def files(self, n_files: int, windows_per_file: int) -> np.ndarray:
        """[n_files * windows_per_file, dim], the windows of each file contiguous."""
        centre = self.centres[self.rng.integers(0, len(self.centres), n_files)]
        per_file = _normalize(centre + self._noise(n_files, 0.8))
        windows = np.repeat(per_file, windows_per_file, axis=0)
        return _normalize(windows + self._noise(len(windows), 0.5))

    def queries(self, n: int) -> np.ndarray:
        centre = self.centres[self.rng.integers(0, len(self.centres), n)]
        return _normalize(centre + self._noise(n, 1.0))


def write_index(path: pathlib.Path, *, windows: int, dim: int, dtype: str,
                windows_per_file: int, seed: int, log=print) -> None:
    settings = store.Settings(dim=dim, dtype=dtype, window_seconds=10.0, hop_seconds=5.0,
                              sample_rate=32000, root=str(path / "collection"))
    record = {"bundle": None, "sample_rate": 32000, "fingerprint": {}}
    gen = Generator(dim, clusters=max(16, windows // 2000), seed=seed)
    n_files = -(-windows // windows_per_file)
    files_per_commit = max(1, (1 << 15) // windows_per_file)
    t0 = time.perf_counter()
    with store.AudioIndex.create(path, settings, record) as index:
        written = 0
        for first in range(0, n_files, files_per_commit):
            count = min(files_per_commit, n_files - first)
            vectors = gen.files(count, windows_per_file)
            changes = store.ChangeSet()
            for i in range(count):
                rows = vectors[i * windows_per_file:(i + 1) * windows_per_file]
                rows = rows[:max(0, windows - written)]
                if not len(rows):
                    break
                changes.add(f"gen/{first + i:08d}.wav", store.FileStat(0, 0), "-",
                            10.0 + 5.0 * (len(rows) - 1), rows,
                            5.0 * np.arange(len(rows)))
                written += len(rows)
            index.commit(changes)
            log(f"  wrote {written}/{windows} windows ({time.perf_counter() - t0:.0f} s)")


def _percentiles(seconds: list[float]) -> dict:
    ms = 1e3 * np.asarray(seconds)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def brute_force(snap, q: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """Scores every stored vector in float32 (one thread: einsum casts in small buffers, as
    the search's own fallback scan does; docs/search.md)."""
    vectors = snap.rows.vectors
    scores = np.einsum("ij,j->i", vectors, q, dtype=np.float32, casting="unsafe")
    return exact.best_per_file(np.arange(len(vectors)), scores, snap.row_file, k)


def run(args, emit) -> None:
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    base = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="atjax-bench-search-"))
    base.mkdir(parents=True, exist_ok=True)
    # Same seed as write_index: the queries aim at the clusters the data was drawn from.
    queries = Generator(args.dim, clusters=max(16, args.windows // 2000),
                        seed=args.seed).queries(args.queries)
    common = {"bench": "search", "windows": args.windows, "dim": args.dim, "k": args.k,
              "queries": args.queries, "windows_per_file": args.windows_per_file,
              "cpus": len(os.sched_getaffinity(0))}
    brute_tops = {}
    try:
        for dtype in args.dtypes.split(","):
            path = base / f"index-{dtype}"
            if not (path / store.DB_NAME).exists():
                log(f"writing {args.windows} x {args.dim} {dtype} windows to {path}")
                write_index(path, windows=args.windows, dim=args.dim, dtype=dtype,
                            windows_per_file=args.windows_per_file, seed=args.seed, log=log)
            disk = sum(p.stat().st_size for p in path.iterdir()  # not the IVF index
                       if not p.name.startswith("ann-"))
            with query.Searcher(path, approximate=False) as searcher:
                searcher.search_embedding(queries[0], args.k)  # warm: page cache, numba
                exact, times, cpu, candidates = [], [], [], []
                for q in queries:
                    stats = {}
                    t, c = time.perf_counter(), time.process_time()
                    hits = searcher.search_embedding(q, args.k, stats=stats)
                    times.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
                    exact.append([h.file_id for h in hits])
                    candidates.append(stats["candidates"])
                # CPU time (all threads) tells what the query costs when the cores are
                # shared: wall time then depends on what else runs.
                emit({**common, "dtype": dtype, "method": "exact", **_percentiles(times),
                      "cpu_ms_p50": round(1e3 * float(np.median(cpu)), 2),
                      "rows_rescored_mean": round(float(np.mean(candidates)), 1),
                      "index_bytes": disk, "load_avg_1m": os.getloadavg()[0]})

                snap = searcher._snap
                nb = min(args.brute_force_queries, len(queries))
                times, agree, max_diff = [], 0, 0.0
                brute_tops[dtype] = []
                for i in range(nb):
                    t = time.perf_counter()
                    top = brute_force(snap, queries[i], args.k)
                    times.append(time.perf_counter() - t)
                    brute_tops[dtype].append([f for f, _, _ in top])
                    agree += [f for f, _, _ in top] == exact[i]
                    got = searcher.search_embedding(queries[i], args.k)
                    max_diff = max(max_diff, max((abs(h.score - s) for h, (_, _, s)
                                                  in zip(got, top, strict=True)), default=0.0))
                emit({**common, "dtype": dtype, "method": "brute", "queries": nb,
                      **_percentiles(times), "exact_matches_brute": f"{agree}/{nb}",
                      "max_score_diff": max_diff})

                # The IVF index quantises rows itself; the storage dtype only changes the
                # reads of its rescoring, so it is measured once.
                if args.approximate and dtype == args.dtypes.split(",")[0]:
                    t = time.perf_counter()
                    ann = approximate.ApproximateIndex.update(searcher.index, snap.rows)
                    build = time.perf_counter() - t
                    times, recall = [], []
                    for q, truth in zip(queries, exact, strict=True):
                        t = time.perf_counter()
                        top = approximate.approximate_top_files(snap, ann, q, args.k,
                                                              args.nprobe)
                        times.append(time.perf_counter() - t)
                        recall.append(len({f for f, _, _ in top} & set(truth)) / len(truth))
                    emit({**common, "dtype": dtype, "method": "approximate",
                          "index": f"IVF{ann.ann.nlist},SQ8", "nprobe": args.nprobe,
                          "build_s": round(build, 1), **_percentiles(times),
                          "load_avg_1m": os.getloadavg()[0],
                          f"recall_at_{args.k}": round(float(np.mean(recall)), 4)})
        if len(brute_tops) == 2:
            a, b = brute_tops.values()
            pairs = list(zip(a, b, strict=True))
            overlap = np.mean([len(set(x) & set(y)) / len(x) for x, y in pairs])
            emit({**common, "method": "float16_vs_float32",
                  f"top{args.k}_overlap": round(float(overlap), 4),
                  "identical_rankings": f"{sum(x == y for x, y in pairs)}/{len(pairs)}"})
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.bench search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--dtypes", default="float16,float32",
                        help="storage dtypes to measure, comma-separated")
    parser.add_argument("--windows_per_file", type=int, default=8)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--brute_force_queries", type=int, default=10)
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--approximate", action="store_true",
                        help="also build and measure the IVF index")
    parser.add_argument("--nprobe", type=int, default=query.DEFAULT_NPROBE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the generated indexes here (reused if present)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary indexes")
    parser.add_argument("--out", help="also append the JSON lines here")
    args = parser.parse_args(argv)
    for dtype in args.dtypes.split(","):
        if dtype not in store.DTYPES:
            parser.error(f"unknown dtype {dtype!r}; choose from {sorted(store.DTYPES)}")
    if min(args.windows, args.dim, args.queries, args.k, args.windows_per_file) < 1:
        parser.error("--windows, --dim, --queries, -k and --windows_per_file must be >= 1")

    run(args, lambda result: emit(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
