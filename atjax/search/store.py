"""The audio search index on disk: SQLite metadata plus memory-mapped embedding arrays.

An index is a folder that needs no server:

  index.sqlite            files (opaque integer id, path relative to the collection root,
                          size, mtime, sha256, rows), settings, the model's identity, and
                          the number of committed embedding rows
  vectors-GGGGGG.f16|f32  [rows, dim] window embeddings as stored (the scores of record)
  codes-GGGGGG.i8         [rows, dim] int8 codes of the same rows (what a search scans)
  scalars-GGGGGG.f32      [rows, 3]   per row: code scale, error bound, window start (s)

Crash safety rests on one ordering. A commit appends rows to the three arrays, fsyncs them,
and only then records the new row count in SQLite, in the same transaction as the file
entries that own the rows. Whatever a crash leaves past the recorded count belongs to no
committed file: readers never map it and the next writer truncates it. Compaction writes
a new generation GGGGGG beside the old one and switches to it in one SQLite transaction;
leftovers of the other generation are deleted by the next writer.

Rows of deleted or re-embedded files stay in the arrays as dead rows (no file points at
them) until a compaction drops them.

The int8 codes let a search read 1 byte per dimension instead of 2 or 4 and still be
exact: each row stores a bound on |x.q - scale * codes.q| / |q|, so a search can discard
every row whose upper bound falls below a lower bound already reached and rescore the
rest from the stored vectors (atjax.search.exact).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pathlib
import re
import sqlite3
from typing import Any, Iterable, Sequence

import numpy as np

from atjax import folder_lock
from atjax.search import codes as codes_lib
from atjax.search import database
from atjax.search import fingerprint
# Part of this module's interface: what its functions raise.
from atjax.search.errors import AudioIndexError, IndexBusyError, ModelMismatchError  # noqa: F401

log = logging.getLogger("atjax.search.store")

FORMAT = "atjax-audio-index/1"
DB_NAME = "index.sqlite"
LOCK_NAME = "writer.lock"
DTYPES = {"float16": ("f16", np.float16), "float32": ("f32", np.float32)}

SCALE, BOUND, START = 0, 1, 2  # columns of the scalars array
# Files named KIND-GGGGGG.EXT: the arrays, and the approximate index
# (atjax.search.approximate) built over them. Only the current generation's are kept.
_GENERATED = re.compile(r"(vectors)-(\d{6})\.(?:f16|f32)|(codes)-(\d{6})\.i8"
                        r"|(scalars)-(\d{6})\.f32|(ann)-(\d{6})\.faiss")
# What an interrupted writer leaves: the database being created (index.sqlite.tmp, and its
# rollback journal), and an approximate index being saved (ann-GGGGGG.faiss.PID.tmp).
_TEMPORARY = re.compile(re.escape(DB_NAME) + r"\.tmp(?:-journal)?|ann-\d{6}\.faiss\.\d+\.tmp")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  path TEXT NOT NULL UNIQUE,
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  duration REAL,
  first_row INTEGER,
  n_rows INTEGER NOT NULL DEFAULT 0,
  error TEXT
);
"""


class _Vanished(AudioIndexError):
    """An array file of the generation just read is gone (a compaction replaced it)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    dim: int
    dtype: str                 # storage dtype of the vectors: float16 or float32
    window_seconds: float
    hop_seconds: float
    sample_rate: int
    root: str                  # absolute path of the collection folder

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise AudioIndexError(f"storage dtype must be one of {sorted(DTYPES)}, "
                                  f"got {self.dtype!r}")
        if self.dim < 1:
            raise AudioIndexError(f"embedding dim must be positive, got {self.dim}")
        if not 0 < self.hop_seconds <= self.window_seconds:
            raise AudioIndexError(f"need 0 < hop <= window, got hop={self.hop_seconds} s, "
                                  f"window={self.window_seconds} s")


@dataclasses.dataclass(frozen=True)
class FileEntry:
    id: int
    path: str                  # relative to Settings.root, '/'-separated
    size: int
    mtime_ns: int
    sha256: str
    duration: float | None
    first_row: int | None
    n_rows: int
    error: str | None          # set for a file that could not be decoded


@dataclasses.dataclass(frozen=True)
class Rows:
    """A consistent snapshot of the committed rows (read-only memory maps)."""
    generation: int
    count: int
    vectors: np.ndarray        # [count, dim] float16/float32
    codes: np.ndarray          # [count, dim] int8
    scalars: np.ndarray        # [count, 3] float32: SCALE, BOUND, START
    # Held open so that reads keep working after a compaction unlinks the file.
    vectors_file: io.FileIO | None = None

    def read_vectors(self, rows: np.ndarray) -> np.ndarray:
        """vectors[rows] for a few scattered rows, by pread of each run of adjacent rows.

        Gathering through the memory map faults each page in with the kernel's read-around,
        an order of magnitude slower a row than pread, which also leaves no mappings behind
        (docs/search.md).
        """
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(rows), self.vectors.shape[1]), self.vectors.dtype)
        if len(rows) > 4096 or self.vectors_file is None:  # many: one pass over the map
            out[order] = self.vectors[ordered]
            return out
        row_bytes = self.vectors.shape[1] * self.vectors.dtype.itemsize
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        fd = self.vectors_file.fileno()
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(ordered)], strict=True):
            data = os.pread(fd, int(hi - lo) * row_bytes, int(ordered[lo]) * row_bytes)
            out[order[lo:hi]] = np.frombuffer(data, self.vectors.dtype).reshape(hi - lo, -1)
        return out


@dataclasses.dataclass
class FileStat:
    size: int
    mtime_ns: int


class ChangeSet:
    """File-level changes that `AudioIndex.commit` applies atomically."""

    def __init__(self):
        self.added: list[tuple[str, FileStat, str, float, np.ndarray, np.ndarray]] = []
        self.failed: list[tuple[str, FileStat, str, str]] = []
        self.removed: list[str] = []
        self.restat: list[tuple[str, FileStat]] = []
        self.moved: list[tuple[str, str, FileStat]] = []

    def add(self, path: str, stat: FileStat, sha256: str, duration: float,
            embeddings: np.ndarray, starts: np.ndarray) -> None:
        """A new or re-embedded file: `embeddings` [n, dim], `starts` [n] window starts (s)."""
        embeddings = np.asarray(embeddings)
        starts = np.asarray(starts, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != starts.shape[0] or not len(starts):
            raise AudioIndexError(f"{path}: need [n, dim] embeddings and n window starts, "
                                  f"got {embeddings.shape} and {starts.shape}")
        self.added.append((path, stat, sha256, float(duration), embeddings, starts))

    def add_failed(self, path: str, stat: FileStat, sha256: str, error: str) -> None:
        self.failed.append((path, stat, sha256, error))

    def remove(self, path: str) -> None:
        self.removed.append(path)

    def restat_file(self, path: str, stat: FileStat) -> None:
        """Same content, new size/mtime record (a touched file)."""
        self.restat.append((path, stat))

    def move(self, old: str, new: str, stat: FileStat) -> None:
        """A renamed file: its id and rows follow it."""
        self.moved.append((old, new, stat))

    def __len__(self) -> int:
        return (len(self.added) + len(self.failed) + len(self.removed) + len(self.restat)
                + len(self.moved))


class AudioIndex:
    """One index folder. Readers see committed state; at most one writer at a time."""

    def __init__(self, path: pathlib.Path, db: sqlite3.Connection, lock_fd: int | None):
        self.path = path
        self._db = db
        self._lock_fd = lock_fd
        meta = self._meta()
        if meta.get("format") != FORMAT:
            raise AudioIndexError(f"{path}: unknown index format {meta.get('format')!r} "
                                  f"(this atjax reads {FORMAT})")
        self.settings = Settings(**meta["settings"])
        self.model_record: dict = meta["model"]

    # -- opening -------------------------------------------------------------------------

    @staticmethod
    def check_new_folder(path: str | os.PathLike) -> None:
        """Raises AudioIndexError unless `path` can take a new index: it does not exist, or
        is an empty folder (or holds only what an interrupted `create` leaves). An index
        never shares its folder: a writer deletes the index files it does not need there."""
        path = pathlib.Path(path)
        if (path / DB_NAME).exists():
            raise AudioIndexError(f"{path} already holds an index")
        if path.exists() and not path.is_dir():
            raise AudioIndexError(f"{path} is a file, not a folder for an index")
        if not path.exists():
            return
        others = sorted(p.name for p in path.iterdir()
                        if p.name != LOCK_NAME and not _TEMPORARY.fullmatch(p.name))
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise AudioIndexError(
                f"{path} is not empty ({len(others)} entries: {shown}) and holds no index; "
                "an index needs a folder of its own: choose a new or empty folder")

    @classmethod
    def create(cls, path: str | os.PathLike, settings: Settings, model: dict) -> "AudioIndex":
        """A new, empty index opened for writing, in a new or empty folder."""
        path = pathlib.Path(path)
        cls.check_new_folder(path)
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = cls._lock(path)
        try:
            # Built under a temporary name and renamed: a crash never leaves a database
            # without its settings.
            tmp = path / (DB_NAME + ".tmp")
            tmp.unlink(missing_ok=True)
            # A crashed create's journal would be "rolled back" into the new database.
            tmp.with_name(tmp.name + "-journal").unlink(missing_ok=True)
            db = sqlite3.connect(tmp, isolation_level=None)
            with database.transaction(db):
                for statement in _SCHEMA.split(";"):
                    db.execute(statement)
                meta = {"format": FORMAT, "settings": dataclasses.asdict(settings),
                        "model": model, "generation": 0, "committed_rows": 0}
                db.executemany("INSERT INTO meta VALUES (?, ?)",
                               [(k, json.dumps(v)) for k, v in meta.items()])
            db.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path / DB_NAME)
            index = cls(path, database.open_writer(path / DB_NAME), lock_fd)
            index._recover()
        except BaseException:
            os.close(lock_fd)
            raise
        return index

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False) -> "AudioIndex":
        path = pathlib.Path(path)
        if not (path / DB_NAME).is_file():
            raise AudioIndexError(f"{path} is not an atjax audio index (no {DB_NAME})")
        lock_fd = cls._lock(path) if writable else None
        try:
            db = (database.open_writer(path / DB_NAME) if writable
                  else database.open_reader(path / DB_NAME))
            index = cls(path, db, lock_fd)
            if writable:
                index._recover()
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return index

    @staticmethod
    def _lock(path: pathlib.Path) -> int:
        try:  # the kernel drops the lock when the process dies, SIGKILL included
            return folder_lock.lock(path / LOCK_NAME)
        except folder_lock.LockHeldError as e:
            raise IndexBusyError(f"{path} is being written by another process "
                                 f"({e.holder})") from None

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def writable(self) -> bool:
        return self._lock_fd is not None

    # -- metadata ------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        try:
            return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as e:
            raise AudioIndexError(f"{self.path}: unreadable index database: {e}") from e

    def _meta_value(self, key: str):
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0])

    def state(self) -> tuple[int, int]:
        """(generation, committed rows) as of now; they change when a writer commits."""
        with database.read(self._db):
            return self._meta_value("generation"), self._meta_value("committed_rows")

    def set_model_record(self, record: dict) -> None:
        self._require_writer()
        with database.transaction(self._db):
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps(record),))
        self.model_record = record

    def check_model(self, model, *, towers: Sequence[str] = ("audio", "text")) -> None:
        """Raises ModelMismatchError unless `model` embeds like the model that built the index."""
        fingerprint.check_model(self.model_record, model, where=self.path,
                                window_seconds=self.settings.window_seconds, towers=towers)

    def files(self, *, with_errors: bool = True) -> list[FileEntry]:
        sql = "SELECT * FROM files" + ("" if with_errors else " WHERE error IS NULL")
        with database.read(self._db):
            return [FileEntry(*row) for row in self._db.execute(sql + " ORDER BY path")]

    def get_files(self, ids: Iterable[int]) -> dict[int, FileEntry]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with database.read(self._db):
            rows = self._db.execute(f"SELECT * FROM files WHERE id IN ({marks})", ids)
            return {row[0]: FileEntry(*row) for row in rows}

    def get_file(self, file_id: int) -> FileEntry | None:
        return self.get_files([file_id]).get(int(file_id))

    def resolve(self, entry: FileEntry) -> pathlib.Path:
        return pathlib.Path(self.settings.root, *entry.path.split("/"))

    def segments(self) -> tuple[Rows, np.ndarray]:
        """A snapshot of the rows plus `row_file` [count] int64: owning file id, -1 if dead.

        Both come from one read transaction, so they agree even while a writer commits.
        """
        for attempt in range(3):
            with database.read(self._db):
                generation = self._meta_value("generation")
                count = self._meta_value("committed_rows")
                segs = np.array(self._db.execute(
                    "SELECT id, first_row, n_rows FROM files WHERE n_rows > 0").fetchall(),
                    dtype=np.int64).reshape(-1, 3)
            try:
                rows = self._map(generation, count)
                break
            except _Vanished:  # compacted between reading the state and opening its files
                if attempt == 2:
                    raise
        row_file = np.full(count, -1, np.int64)
        if len(segs):
            ids, first, n = segs.T
            if first.min() < 0 or (first + n).max() > count:
                raise AudioIndexError(f"{self.path}: a file's rows lie outside the "
                                      f"{count} committed rows (index corrupt)")
            offsets = np.repeat(first - np.cumsum(n) + n, n) + np.arange(n.sum())
            row_file[offsets] = np.repeat(ids, n)
        return rows, row_file

    # -- arrays --------------------------------------------------------------------------

    def _array_paths(self, generation: int) -> dict[str, pathlib.Path]:
        ext = DTYPES[self.settings.dtype][0]
        return {"vectors": self.path / f"vectors-{generation:06d}.{ext}",
                "codes": self.path / f"codes-{generation:06d}.i8",
                "scalars": self.path / f"scalars-{generation:06d}.f32"}

    def _row_shapes(self) -> dict[str, tuple[np.dtype, int]]:
        d = self.settings.dim
        return {"vectors": (np.dtype(DTYPES[self.settings.dtype][1]), d),
                "codes": (np.dtype(np.int8), d),
                "scalars": (np.dtype(np.float32), 3)}

    def _map(self, generation: int, count: int) -> Rows:
        arrays = {}
        for name, path in self._array_paths(generation).items():
            dtype, width = self._row_shapes()[name]
            if count == 0:
                arrays[name] = np.zeros((0, width), dtype)
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise _Vanished(f"{path} is missing ({count} rows are committed)") from None
            if size < count * width * dtype.itemsize:
                raise AudioIndexError(
                    f"{path} holds {size // (width * dtype.itemsize)} rows but {count} are "
                    "committed (index corrupt)")
            # Only the committed prefix is mapped: rows a crashed writer left behind are
            # invisible here.
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", shape=(count, width))
        try:
            vectors_file = (open(self._array_paths(generation)["vectors"], "rb", buffering=0)
                            if count else None)
        except FileNotFoundError:
            raise _Vanished(f"{self.path}: generation {generation} vanished") from None
        return Rows(generation, count, **arrays, vectors_file=vectors_file)

    def _recover(self) -> None:
        """Writer start-up: cut uncommitted tails, delete the other generation's files."""
        generation, count = self.state()
        keep = self._array_paths(generation)
        for name, path in keep.items():
            dtype, width = self._row_shapes()[name]
            want = count * width * dtype.itemsize
            if not path.exists():
                if count:
                    raise AudioIndexError(f"{path} is missing ({count} rows are committed)")
                path.touch()
            size = path.stat().st_size
            if size < want:
                raise AudioIndexError(f"{path} holds fewer rows than the {count} committed "
                                      "(index corrupt)")
            if size > want:
                os.truncate(path, want)
        keep_names = {p.name for p in keep.values()}
        # Only names this module and atjax.search.approximate generate are touched: nothing else.
        for stray in self.path.iterdir():
            if _TEMPORARY.fullmatch(stray.name):
                stray.unlink()
            elif match := _GENERATED.fullmatch(stray.name):
                kind, digits = [g for g in match.groups() if g is not None]
                if int(digits) != generation or (kind != "ann" and stray.name not in keep_names):
                    stray.unlink()

    def _append(self, generation: int, count: int, arrays: dict[str, np.ndarray]) -> None:
        for name, path in self._array_paths(generation).items():
            dtype, width = self._row_shapes()[name]
            # Cut anything past the committed rows first (a failed earlier append), so new
            # rows land exactly at row `count`.
            os.truncate(path, count * width * dtype.itemsize)
            with open(path, "ab") as f:
                f.write(np.ascontiguousarray(arrays[name], dtype).tobytes())
                f.flush()
                os.fsync(f.fileno())

    def _require_writer(self) -> None:
        if not self.writable:
            raise AudioIndexError(f"{self.path} was opened read-only")

    # -- writing -------------------------------------------------------------------------

    def commit(self, changes: ChangeSet) -> None:
        """Applies `changes` atomically: after a crash either all of them are visible or none."""
        self._require_writer()
        if not len(changes):
            return
        generation, count = self.state()
        dtype = DTYPES[self.settings.dtype][1]
        firsts = []
        if changes.added:
            for path, *_, emb, _ in changes.added:
                if emb.shape[1] != self.settings.dim:
                    raise AudioIndexError(f"{path}: {emb.shape[1]}-dim embeddings for an "
                                          f"index of dim {self.settings.dim}")
            vectors = np.concatenate([a[4] for a in changes.added]).astype(dtype)
            if not np.all(np.isfinite(vectors)):
                raise AudioIndexError("refusing to store non-finite embeddings")
            starts = np.concatenate([a[5] for a in changes.added])
            codes, scale, bound = codes_lib.quantize(vectors)
            scalars = np.stack([scale, bound, starts], axis=1).astype(np.float32)
            self._append(generation, count, {"vectors": vectors, "codes": codes,
                                             "scalars": scalars})
            sizes = [len(a[5]) for a in changes.added]
            firsts = list(count + np.cumsum([0] + sizes[:-1]))
            new_count = count + sum(sizes)
        else:
            new_count = count
        try:
            with database.transaction(self._db) as db:
                for path in changes.removed:
                    db.execute("DELETE FROM files WHERE path = ?", (path,))
                for old, new, st in changes.moved:
                    db.execute("UPDATE files SET path = ?, size = ?, mtime_ns = ? WHERE path = ?",
                               (new, st.size, st.mtime_ns, old))
                for path, st in changes.restat:
                    db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?",
                               (st.size, st.mtime_ns, path))
                for (path, st, sha, duration, emb, _), first in zip(changes.added, firsts,
                                                                    strict=True):
                    self._upsert(db, path, st, sha, duration, int(first), len(emb), None)
                for path, st, sha, error in changes.failed:
                    self._upsert(db, path, st, sha, None, None, 0, error)
                db.execute("UPDATE meta SET value = ? WHERE key = 'committed_rows'",
                           (json.dumps(int(new_count)),))
        except BaseException:
            self._recover()  # the appended rows belong to nothing: drop them now
            raise

    @staticmethod
    def _upsert(db, path, st, sha, duration, first_row, n_rows, error) -> None:
        # UPDATE keeps the file's id stable across re-embedding (links to it stay valid).
        values = (st.size, st.mtime_ns, sha, duration, first_row, n_rows, error)
        cur = db.execute("UPDATE files SET size = ?, mtime_ns = ?, sha256 = ?, duration = ?, "
                         "first_row = ?, n_rows = ?, error = ? WHERE path = ?", values + (path,))
        if cur.rowcount == 0:
            db.execute("INSERT INTO files (size, mtime_ns, sha256, duration, first_row, n_rows, "
                       "error, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values + (path,))

    def dead_rows(self) -> int:
        with database.read(self._db):
            live = self._db.execute("SELECT COALESCE(SUM(n_rows), 0) FROM files").fetchone()[0]
            return self._meta_value("committed_rows") - live

    def compact(self, chunk_rows: int = 1 << 16) -> int:
        """Rewrites the arrays without dead rows (a new generation). Returns rows dropped."""
        self._require_writer()
        rows, _ = self.segments()
        generation, count = rows.generation, rows.count
        with database.read(self._db):
            live = self._db.execute("SELECT id, first_row, n_rows FROM files WHERE n_rows > 0 "
                                    "ORDER BY first_row").fetchall()
        target = generation + 1
        paths = self._array_paths(target)
        for p in paths.values():
            p.unlink(missing_ok=True)
            p.touch()
        new_first, written = [], 0
        pending: dict[str, list[np.ndarray]] = {k: [] for k in paths}

        def flush():
            nonlocal pending
            if pending["codes"]:
                self._write_tail(paths, {k: np.concatenate(v) for k, v in pending.items()})
            pending = {k: [] for k in paths}

        buffered = 0
        for file_id, first, n in live:
            for name in paths:
                pending[name].append(np.asarray(getattr(rows, name)[first:first + n]))
            new_first.append((written, file_id))
            written += n
            buffered += n
            if buffered >= chunk_rows:
                flush()
                buffered = 0
        flush()
        for p in paths.values():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        with database.transaction(self._db) as db:
            db.executemany("UPDATE files SET first_row = ? WHERE id = ?", new_first)
            db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (json.dumps(target),))
            db.execute("UPDATE meta SET value = ? WHERE key = 'committed_rows'",
                       (json.dumps(written),))
        for p in self._array_paths(generation).values():
            p.unlink(missing_ok=True)  # open maps of readers stay valid until they reload
        return count - written

    def _write_tail(self, paths, arrays) -> None:
        for name, path in paths.items():
            dtype = self._row_shapes()[name][0]
            with open(path, "ab") as f:
                f.write(np.ascontiguousarray(arrays[name], dtype).tobytes())
