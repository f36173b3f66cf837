"""An indexed audio file, opened for serving only while it is the file that was indexed.

`open_indexed` opens a regular file whose real path (every symbolic link resolved) lies
inside the indexed folder, and only while its size and modification time are those
recorded when it was indexed: a link re-pointed, or a file replaced, after indexing is
refused (`AudioRefused`), never read. The search server (atjax.serve) plays files through
it; `atjax.search.Searcher.open_audio` looks the id up and calls it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import stat


class AudioRefused(Exception):
    """Why no file is handed out.

    `kind` is "missing" (no such indexed file, or it is gone), "outside" (its real path
    lies outside the indexed folder) or "changed" (not the file that was indexed).
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclasses.dataclass
class AudioFile:
    """An indexed file as `open_indexed` hands it out."""
    file: io.BufferedReader    # open for reading; the caller closes it
    size: int                  # bytes, as of opening
    name: str                  # the indexed file name (for its media type)
    real_path: pathlib.Path


def open_indexed(root: str | os.PathLike, path: str | os.PathLike, *, size: int,
                 mtime_ns: int, name: str) -> AudioFile:
    """`path`, opened for reading, if it lies inside `root` and is still the regular file
    of `size` bytes and modification time `mtime_ns` that was indexed; else AudioRefused."""
    root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not _inside(real, root):
        raise AudioRefused("outside", "the file lies outside the indexed folder")
    try:
        # No link is followed at the last step (one swapped in since realpath is
        # refused), and a FIFO put in the file's place cannot block the open.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AudioRefused("missing", "the indexed file is gone") from None
    except OSError:
        raise AudioRefused("changed", "the indexed file cannot be opened") from None
    try:
        st = os.fstat(fd)
        opened = _opened_path(fd)  # where the file really is, on systems that tell
        if opened is not None and not _inside(opened, root):
            raise AudioRefused("outside", "the file lies outside the indexed folder")
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            raise AudioRefused("changed", "the file changed since it was indexed; "
                               "index the folder again")
        os.set_blocking(fd, True)
        return AudioFile(os.fdopen(fd, "rb"), st.st_size, name, pathlib.Path(real))
    except BaseException:
        os.close(fd)
        raise


def _inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies below it, compared by path components."""
    return pathlib.PurePath(path).is_relative_to(root)


def _opened_path(fd: int) -> str | None:
    """The path of an open file as the kernel knows it (Linux), else None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
