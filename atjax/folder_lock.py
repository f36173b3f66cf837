"""An exclusive lock on a folder that one process at a time may write: a training workdir
(atjax.trainer) or an audio index (atjax.search.store).

The lock is flock(2) on a file in the folder, taken without waiting. The kernel drops it
when the holding process exits, however it exits (SIGKILL included), so a lock left by a
dead process never blocks the next one. The file stays, holding the PID and host of the
last process that took the lock: a refused process names its holder.

Across hosts the lock holds where the shared file system passes flock on (NFS does; a FUSE
mount of a bucket locks per host only). A file system without locks at all raises
OSError with errno ENOLCK, ENOSYS or EOPNOTSUPP (`UNSUPPORTED`); the caller decides.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import socket

UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


class LockHeldError(RuntimeError):
    """Another live process holds the lock; `holder` names it ("PID 123 on host h")."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def _holder(fd: int) -> str:
    try:
        pid, _, host = os.pread(fd, 256, 0).decode().strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        pid, host = "", ""
    if not pid.isdigit():  # the holder has not written itself yet
        return "another process (PID not recorded yet)"
    return f"PID {pid}" + (f" on host {host}" if host else "")


def lock(path: str | os.PathLike) -> int:
    """Takes the lock of the file `path` (created if absent) and returns its descriptor:
    closing it releases the lock. Raises LockHeldError naming the holder when another
    process has it."""
    path = pathlib.Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LockHeldError(f"{path} is locked by {holder}", holder) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        record = f"{os.getpid()} {socket.gethostname()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    except OSError:  # e.g. a full disk: the lock holds all the same, unnamed
        pass
    return fd
