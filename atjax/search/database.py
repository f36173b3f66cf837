"""The SQLite connections of an index: the writer's, a reader's, and their transactions.

The writer runs in WAL mode, so that readers (a search server) keep working while an
indexer commits, and with synchronous=FULL, so that a commit is on disk before it returns.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3

from atjax.search.errors import AudioIndexError

log = logging.getLogger("atjax.search.database")


def open_writer(path: pathlib.Path) -> sqlite3.Connection:
    """The writer's connection."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # readers (serve) work while an indexer writes
        db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it returns
    except sqlite3.DatabaseError as e:
        db.close()
        raise AudioIndexError(f"{path.parent}: cannot open the index for writing: {e}") from e
    return db


def _connect_read_only(path: pathlib.Path, *, immutable: bool) -> sqlite3.Connection:
    uri = path.absolute().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
    db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None,
                         check_same_thread=False)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file for real
    except BaseException:
        db.close()
        raise
    return db


def open_reader(path: pathlib.Path) -> sqlite3.Connection:
    """A reader's connection: read-only, so that an index on storage this process may not
    write (a read-only mount, another user's folder) can be searched.

    A WAL database is read through its -shm file, which a reader creates if the writer
    left none; in a folder it cannot write that fails, and the database is opened as
    immutable instead. That is exact when no -wal file holds commits (the last writer
    closed cleanly); otherwise the index cannot be read here without losing them.
    """
    try:
        return _connect_read_only(path, immutable=False)
    except sqlite3.DatabaseError as error:
        if not isinstance(error, sqlite3.OperationalError) or os.access(path.parent, os.W_OK):
            raise AudioIndexError(f"{path.parent}: unreadable index database: "
                                  f"{error}") from error
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise AudioIndexError(
                f"{path.parent}: the folder is read-only and the index was not closed "
                f"cleanly ({wal.name} holds changes); open it once where it can be written "
                f"(e.g. python -m atjax.index) and try again ({error})") from error
    log.info("%s: read-only folder, opening the index as immutable", path.parent)
    return _connect_read_only(path, immutable=True)


class transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class read(transaction):
    """A read transaction: several SELECTs see one snapshot."""

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN DEFERRED")
        return self.db

    def __exit__(self, exc_type, *_):
        self.db.execute("COMMIT")
