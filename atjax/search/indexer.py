"""`python -m atjax.index AUDIO_DIR --model BUNDLE --out INDEX`: embed a folder of audio.

Every audio file under AUDIO_DIR (recursively; which files: see below) is cut into
overlapping windows (default: the model's clip length, else 10 s, with a hop of half a
window; a file shorter than a window is one window padded with silence) and each window is
embedded, so that a search hit can point at the moment a sound happens. A window shorter
than the audio network's minimum (31 hops of its frontend: 0.31 s for ResNet38 at 32 kHz)
is padded with silence to that minimum by the model's embed_audio, as any clip that short
is. Running the command again on an existing INDEX only embeds new or changed files
(size + mtime first, then the content hash), follows renamed files without re-embedding
them, and drops deleted ones. A file that cannot be decoded is listed and skipped, and
tried again on the next run. Files are decoded in blocks and cut into windows as they
decode, so memory does not grow with a file's duration (only its embeddings do: dim x 4
bytes a window). Work is committed every --commit-every files; a killed run loses at most
the batch in flight and the next run continues from there. Decoding needs the `data`
extra (pip install "atjax[data]").

Which files: those with an audio extension (AUDIO_EXTENSIONS, any case). Hidden files and
folders (names starting with '.') are skipped, and symbolic links to folders are not
entered, so a walk never loops and never leaves AUDIO_DIR through a folder link. A
symbolic link to a file is indexed when its real path lies inside AUDIO_DIR; one that
leads outside it, a dangling one, and a name that is not valid UTF-8 (an index stores
text paths) are listed as skipped and left out of the index.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import logging
import math
import os
import pathlib
import sys
import time
from typing import Iterator

import numpy as np

from atjax import console
from atjax.search import approximate
from atjax.search import cli
from atjax.search import fingerprint
from atjax.search import store
from atjax.search import windows as windowing

log = logging.getLogger("atjax.search.indexer")

DEFAULT_WINDOW_SECONDS = 10.0
# A decode thread decodes up to this many samples (at the model's rate) of a file ahead of
# the model: all of a typical file, so decoding overlaps embedding. The rest of a longer
# file is decoded in the main thread, block by block, as its windows are embedded.
PREFETCH_SAMPLES = 1 << 22  # 16 MB of float32: 4.4 min at 16 kHz
# What the data pipeline decodes: libsndfile formats, plus what audioread reaches via ffmpeg.
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif",
    ".aiff", ".aifc", ".au", ".caf", ".w64", ".rf64", ".webm", ".wma",
})


@dataclasses.dataclass
class IndexReport:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # Files that had failed before, were tried again and failed again.
    still_failing: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    windows: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    compacted_rows: int = 0
    files_in_index: int = 0
    windows_in_index: int = 0

    def summary(self) -> str:
        return (f"{self.added} new, {self.changed} changed, {self.moved} moved, "
                f"{self.removed} removed, {self.unchanged} unchanged, "
                f"{len(self.failed) + len(self.still_failing)} undecodable; "
                f"embedded {self.windows} windows "
                f"({self.audio_seconds / 3600:.2f} h of audio) in {self.seconds:.1f} s; "
                f"the index holds {self.files_in_index} files, "
                f"{self.windows_in_index} windows")


def default_window_seconds(model) -> float:
    """The model's clip length if it tells one (the length it was trained on), else 10 s."""
    clip = getattr(model, "clip_seconds", None)
    if clip is None:
        # atjax.inference.Embedder carries its experiment config.
        try:
            clip = model.config.model.clip_seconds
        except AttributeError:
            clip = None
    return float(clip) if clip else DEFAULT_WINDOW_SECONDS


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def scan_folder(root: pathlib.Path, skip: pathlib.Path | None = None,
                ) -> tuple[dict[str, tuple[pathlib.Path, store.FileStat]],
                           list[tuple[str, str]]]:
    """Audio files under `root` by '/'-separated relative path, plus (path, reason) for
    those skipped (see the module doc for which files are taken).

    The folder `skip` (the index itself, when it lies inside the collection) is not entered.
    """
    found, unusable = {}, []
    skip = os.path.realpath(skip) if skip is not None else None
    real_root = pathlib.PurePath(os.path.realpath(root))
    for dirpath, dirnames, filenames in os.walk(root):
        kept = []
        for d in sorted(dirnames):
            if d.startswith(".") or os.path.realpath(os.path.join(dirpath, d)) == skip:
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                log.info("not entering %s: a symbolic link to a folder",
                         ascii(pathlib.Path(dirpath, d).relative_to(root).as_posix()))
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                continue
            path = pathlib.Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                unusable.append((ascii(rel), "file name is not valid UTF-8"))
                continue
            if path.is_symlink() and not pathlib.PurePath(
                    os.path.realpath(path)).is_relative_to(real_root):
                log.warning("skipped %s: a symbolic link to a file outside %s", rel, root)
                unusable.append((rel, "a symbolic link to a file outside the audio folder"))
                continue
            try:
                st = path.stat()
            except OSError as e:  # a dangling symlink, or a file deleted under us
                unusable.append((rel, f"cannot stat: {e}"))
                continue
            if path.is_file():
                found[rel] = (path, store.FileStat(st.st_size, st.st_mtime_ns))
    return found, unusable


@dataclasses.dataclass
class _Job:
    rel: str
    path: pathlib.Path
    stat: store.FileStat
    old: store.FileEntry | None
    same_as: frozenset[str]    # hashes for which the file needs no decoding


@dataclasses.dataclass
class _Decoded:
    job: _Job
    sha: str
    head: list[np.ndarray] = dataclasses.field(default_factory=list)  # the first blocks
    rest: Iterator[np.ndarray] | None = None  # the blocks after them, still to decode
    error: str | None = None
    same: bool = False         # content equals one of job.same_as

    def blocks(self) -> Iterator[np.ndarray]:
        return itertools.chain(self.head, self.rest or ())


@dataclasses.dataclass
class _Pending:
    """A file whose windows are being embedded (possibly over several batches)."""
    job: _Job
    sha: str
    starts: list[int] = dataclasses.field(default_factory=list)   # samples
    vectors: list[np.ndarray] = dataclasses.field(default_factory=list)  # in window order
    remaining: int = 0         # windows queued for the model, not embedded yet
    complete: bool = False     # every window is queued and `duration` is known
    duration: float = 0.0


def describe_failure(error: BaseException) -> str:
    """Why a file was skipped, for the report."""
    if isinstance(error, MemoryError):
        return "out of memory while decoding (MemoryError)"
    if isinstance(error, (ValueError, OSError)):  # AudioDecodeError names the file
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"


def _decode(job: _Job, sample_rate: int) -> _Decoded:
    """Hashes the file and decodes its first PREFETCH_SAMPLES; any failure is an `error`."""
    try:
        sha = sha256_file(job.path)
    except OSError as e:
        return _Decoded(job, "", error=f"cannot read: {e}")
    if sha in job.same_as:
        return _Decoded(job, sha, same=True)
    # Whatever goes wrong decoding one file (a corrupt stream, a decoder that runs out of
    # memory) skips that file only.
    try:
        blocks = windowing.audio_lib().stream(job.path, sample_rate)
        head, decoded = [], 0
        for block in blocks:
            head.append(block)
            decoded += len(block)
            if decoded >= PREFETCH_SAMPLES:
                return _Decoded(job, sha, head=head, rest=blocks)
        return _Decoded(job, sha, head=head)
    except Exception as e:
        return _Decoded(job, sha, error=describe_failure(e))


def _prefetch(pool, fn, items, lookahead: int) -> Iterator:
    """fn(item) for items in order, computed up to `lookahead` items ahead on `pool`."""
    items = iter(items)
    queue = collections.deque(pool.submit(fn, x) for x in itertools.islice(items, lookahead))
    while queue:
        result = queue.popleft().result()
        for x in items:
            queue.append(pool.submit(fn, x))
            break
        yield result


def build_index(audio_dir: str | os.PathLike, model, index_dir: str | os.PathLike, *,
                bundle: str | None = None, window_seconds: float | None = None,
                hop_seconds: float | None = None, dtype: str | None = None,
                batch_size: int = 16, commit_every: int = 16, decode_workers: int = 2,
                progress: bool = True) -> IndexReport:
    """Creates or updates the index at `index_dir` for the audio under `audio_dir`.

    `model` follows the embedder protocol. `bundle` is recorded so that search can load the
    same model later. window/hop/dtype default to the index's own settings when it exists.
    """
    t0 = time.perf_counter()
    root = pathlib.Path(audio_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder not found: {audio_dir}")
    if batch_size < 1 or commit_every < 1:
        raise ValueError(f"batch_size and commit_every must be >= 1, got {batch_size}, "
                         f"{commit_every}")
    for name, value in (("window_seconds", window_seconds), ("hop_seconds", hop_seconds)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    windowing.audio_lib()  # before anything is created: without decoders nothing can be indexed
    index = _open_for(root, model, pathlib.Path(index_dir), bundle, window_seconds,
                      hop_seconds, dtype)
    try:
        report = _update(index, root, model, batch_size, commit_every, decode_workers,
                         progress)
        dead = index.dead_rows()
        if dead > index.state()[1] - dead:  # more dead rows than live ones
            report.compacted_rows = index.compact()
        rows, row_file = index.segments()
        report.windows_in_index = int(np.count_nonzero(row_file >= 0))
        report.files_in_index = len(index.files(with_errors=False))
    finally:
        index.close()
    report.seconds = time.perf_counter() - t0
    return report


def _open_for(root, model, index_dir, bundle, window_seconds, hop_seconds, dtype):
    for attr in ("embed_audio", "embed_text", "sample_rate"):
        if not hasattr(model, attr):
            raise TypeError(f"the model lacks {attr!r} (see the embedder protocol)")
    if not (index_dir / store.DB_NAME).exists():
        if os.path.realpath(index_dir) == os.path.realpath(root):
            raise store.AudioIndexError(
                f"the index folder {index_dir} is the audio folder; give the index a folder "
                "of its own (e.g. beside the audio folder)")
        if window_seconds is None:
            window_seconds = default_window_seconds(model)
        if hop_seconds is None:
            hop_seconds = window_seconds / 2
        _check_window(window_seconds, hop_seconds, int(model.sample_rate))
        store.AudioIndex.check_new_folder(index_dir)
        record = fingerprint.model_record(model, bundle=bundle, window_seconds=window_seconds)
        settings = store.Settings(
            dim=len(record["fingerprint"]["audio"][0]), dtype=dtype or "float16",
            window_seconds=float(window_seconds), hop_seconds=float(hop_seconds),
            sample_rate=int(model.sample_rate), root=str(root))
        return store.AudioIndex.create(index_dir, settings, record)
    index = store.AudioIndex.open(index_dir, writable=True)
    try:
        s = index.settings
        asked = {"window_seconds": window_seconds, "hop_seconds": hop_seconds, "dtype": dtype,
                 "root": str(root)}
        for name, value in asked.items():
            if value is not None and value != getattr(s, name):
                raise store.AudioIndexError(
                    f"{index_dir} was built with {name}={getattr(s, name)!r}; got {value!r}. "
                    "Use a new --out for different settings.")
        index.check_model(model)
        if bundle is not None and os.path.abspath(bundle) != index.model_record["bundle"]:
            index.set_model_record({**index.model_record, "bundle": os.path.abspath(bundle)})
    except BaseException:
        index.close()
        raise
    return index


def _check_window(window_seconds: float, hop_seconds: float, sample_rate: int) -> None:
    for name, value in (("window", window_seconds), ("hop", hop_seconds)):
        if round(value * sample_rate) < 1:
            raise store.AudioIndexError(
                f"the {name} of {value} s is less than one sample at the model's "
                f"{sample_rate} Hz")


def _update(index, root, model, batch_size, commit_every, decode_workers, progress):
    from tqdm import tqdm

    report = IndexReport()
    s = index.settings
    sr = s.sample_rate
    window_len = int(round(s.window_seconds * sr))
    hop_len = max(1, int(round(s.hop_seconds * sr)))
    known = {e.path: e for e in index.files()}
    on_disk, unusable = scan_folder(root, skip=index.path)
    report.failed.extend(unusable)
    jobs, missing, missing_by_sha = _plan(known, on_disk, report)

    changes = store.ChangeSet()
    bar = tqdm(total=sum(j.stat.size for j in jobs), unit="B", unit_scale=True,
               unit_divisor=1024, desc="embedding", disable=not progress or not jobs,
               mininterval=1.0, file=sys.stderr)
    frames, refs = [], []  # the next model batch: windows and the _Pending each belongs to
    done_files = 0

    def maybe_commit(force=False):
        nonlocal changes
        if len(changes) and (force or len(changes) >= commit_every):
            index.commit(changes)
            changes = store.ChangeSet()

    def finish(p: _Pending):
        embeddings = np.stack(p.vectors)
        if not np.all(np.isfinite(embeddings)):
            fail(p.job, p.sha, "the model returned non-finite embeddings")
            return
        starts = np.asarray(p.starts, np.float64) / sr
        changes.add(p.job.rel, p.job.stat, p.sha, p.duration, embeddings, starts)
        if p.job.old is None:
            report.added += 1
        else:
            report.changed += 1
        report.windows += len(starts)
        report.audio_seconds += p.duration
        maybe_commit()

    def fail(job, sha, error):
        changes.add_failed(job.rel, job.stat, sha, error)
        tried_before = job.old is not None and job.old.error is not None
        (report.still_failing if tried_before else report.failed).append((job.rel, error))
        bar.write(f"skipped {job.rel}: {error}", file=sys.stderr)
        maybe_commit()

    def flush():
        if not frames:
            return
        out = np.asarray(model.embed_audio(np.stack(frames), sr), np.float32)
        if out.shape != (len(frames), s.dim):
            raise ValueError(f"model.embed_audio returned shape {out.shape} for "
                             f"{len(frames)} windows; expected ({len(frames)}, {s.dim})")
        for p, vector in zip(refs, out, strict=True):
            p.vectors.append(vector)
            p.remaining -= 1
            if p.complete and p.remaining == 0:
                finish(p)
        frames.clear()
        refs.clear()

    def abandon(p: _Pending, error: str):
        """Decoding failed part-way: drop the file's windows that wait for the model."""
        keep = [i for i, q in enumerate(refs) if q is not p]
        frames[:] = [frames[i] for i in keep]
        refs[:] = [refs[i] for i in keep]
        fail(p.job, p.sha, error)

    def embed(result: _Decoded):
        p = _Pending(result.job, result.sha)
        windower = windowing.Windower(window_len, hop_len)
        windows = windower.frames(result.blocks())
        while True:
            # Only decoding runs inside this try: a failing model must stop the run.
            try:
                item = next(windows, None)
            except Exception as e:
                abandon(p, describe_failure(e))
                return
            if item is None:
                break
            p.starts.append(item[0])
            p.remaining += 1
            frames.append(item[1])
            refs.append(p)
            if len(frames) == batch_size:
                flush()
        p.duration = windower.samples / sr
        p.complete = True
        if p.remaining == 0:
            finish(p)

    pool = concurrent.futures.ThreadPoolExecutor(max(1, decode_workers))
    try:
        for result in _prefetch(pool, lambda j: _decode(j, sr), jobs, decode_workers + 1):
            job = result.job
            if result.same and job.old is not None:
                changes.restat_file(job.rel, job.stat)
                report.unchanged += 1
                maybe_commit()
            elif result.same and missing_by_sha.get(result.sha):
                gone = missing_by_sha[result.sha].pop()
                del missing[gone.path]
                changes.move(gone.path, job.rel, job.stat)
                report.moved += 1
                maybe_commit()
            else:
                if result.same:  # its twin was claimed by an earlier rename: decode after all
                    result = _decode(dataclasses.replace(job, same_as=frozenset()), sr)
                if result.error is not None:
                    fail(job, result.sha, result.error)
                else:
                    embed(result)
            done_files += 1
            bar.update(job.stat.size)
            skipped = len(report.failed) + len(report.still_failing)
            bar.set_postfix_str(f"{done_files}/{len(jobs)} files, {skipped} skipped",
                                refresh=False)
        flush()
        for path in missing:
            changes.remove(path)
            report.removed += 1
        maybe_commit(force=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return report


def _plan(known: dict[str, store.FileEntry], on_disk, report: IndexReport):
    """The files to look at (jobs), and the index's files that are gone from disk."""
    missing = {p: e for p, e in known.items() if p not in on_disk}
    missing_by_sha = collections.defaultdict(list)
    for e in missing.values():
        if e.error is None:  # an entry without rows has nothing for a renamed file to keep
            missing_by_sha[e.sha256].append(e)
    jobs = []
    for rel, (path, st) in on_disk.items():
        old = known.get(rel)
        if old is not None and old.error is not None:
            # A failed entry holds no rows, so trying again costs only the decoding; the
            # cause may have been outside the file (a read error, a missing decoder, too
            # little memory) and be gone now, with size and mtime unchanged.
            jobs.append(_Job(rel, path, st, old, frozenset()))
            continue
        if old is not None and (old.size, old.mtime_ns) == (st.size, st.mtime_ns):
            report.unchanged += 1
            continue
        # A changed stat with the old hash is a touched file; a new path with the hash of
        # a vanished one is a rename. Neither needs decoding.
        same_as = frozenset([old.sha256]) if old else frozenset(missing_by_sha)
        jobs.append(_Job(rel, path, st, old, same_as))
    return jobs, missing, missing_by_sha


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio_dir", help="folder of audio files (searched recursively)")
    parser.add_argument("--out", required=True, help="index folder (created or updated); a "
                        "new index needs a new or empty folder")
    parser.add_argument("--model", help="export bundle or training workdir; required for a "
                        "new index, defaults to the one the index records")
    parser.add_argument("--window", type=cli.positive_seconds,
                        help="window length in seconds (default: the model's clip length, "
                        "else 10); a window shorter than the audio network's minimum (0.31 s "
                        "for ResNet38 at 32 kHz) is padded with silence to that minimum")
    parser.add_argument("--hop", type=cli.positive_seconds,
                        help="hop between windows in seconds (default: half a window)")
    parser.add_argument("--dtype", choices=sorted(store.DTYPES),
                        help="storage of the embeddings (default float16)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=16,
                        help="windows per model call")
    parser.add_argument("--commit-every", type=cli.positive_int, default=16,
                        help="files per committed batch (what a crash can lose)")
    parser.add_argument("--approximate", action="store_true",
                        help="also build/extend the approximate (IVF) index for fast search "
                             "over many millions of windows (needs faiss-cpu)")
    parser.add_argument("--no-progress", action="store_true")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a file, not an index folder")
    console.setup(args.verbose)

    bundle = args.model
    if bundle is None:
        try:
            with store.AudioIndex.open(args.out) as existing:
                bundle = existing.model_record.get("bundle")
        except store.AudioIndexError:
            parser.error(f"--model is required to create the index {args.out}")
        if bundle is None:
            parser.error(f"{args.out} records no model bundle; pass --model")
    try:
        if args.approximate:
            approximate.faiss_module()  # missing faiss should stop the run before hours of work
        import atjax

        model = atjax.load(bundle)
        report = build_index(args.audio_dir, model, args.out, bundle=bundle,
                             window_seconds=args.window, hop_seconds=args.hop,
                             dtype=args.dtype, batch_size=args.batch_size,
                             commit_every=args.commit_every, progress=not args.no_progress)
        _print_report(args.out, report)
        if args.approximate:
            _update_approximate(args.out, report)
    except cli.CLI_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: committed batches are kept; run the same command to continue",
              file=sys.stderr)
        return 130
    return 0


def _print_report(out: str, report: IndexReport) -> None:
    print(f"{out}: {report.summary()}")
    if report.failed:
        print(f"skipped {len(report.failed)} files that could not be indexed:")
        for rel, error in report.failed:
            print(f"  {rel}: {error}")
    if report.still_failing:
        print(f"{len(report.still_failing)} files that failed before were tried again and "
              "still cannot be decoded (the next run tries them again):")
        for rel, error in report.still_failing:
            print(f"  {rel}: {error}")


def _update_approximate(out: str, report: IndexReport) -> None:
    if report.windows_in_index == 0:
        print("the index holds no windows yet: no approximate index was built (a later "
              "run with --approximate builds it)")
        return
    with store.AudioIndex.open(out) as index:
        approximate.ApproximateIndex.update(index)


if __name__ == "__main__":
    sys.exit(main())
