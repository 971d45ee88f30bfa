"""One run at a time per output folder: ``OUT/.lock``, held with ``fcntl.flock`` for the run's life.

Two runs on one ``--out`` would write the same files (and one would delete what the other is
writing, with ``--overwrite``), so the second stops at once, naming the process that holds the lock.
The lock belongs to the open file, not to its presence on disk: when the holder dies, even by
``kill -9``, the kernel releases it, and the next run takes the folder over without advice to
delete anything. A forked child closes its inherited copy of the descriptor, so a process the run
started cannot keep the folder locked after the run is gone. The file keeps the holder's pid and
host for the message.

A file left by a process on another host is not taken over on its own: on shared storage the
lock may not reach across machines (NFS without lock support), so that process may still be
writing the folder. The run stops naming the host and pid, and takes over only when told
(``take_over_foreign``, the pipeline's ``--take-over-lock``).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
import weakref
from typing import Optional

LOCK_NAME = ".lock"

# The locks this process holds: a forked child (a worker of a pool, a data loader) closes its copy
# of their descriptors at once, so it never keeps the lock of a run it outlives.
_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _close_in_child() -> None:
    for lock in list(_HELD):
        if lock._fd is not None:
            try:
                os.close(lock._fd)
            except OSError:
                pass
            lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLockedError(Exception):
    """Another process runs the pipeline on the same output folder (the message names it)."""


def _fields(path: Path) -> dict:
    try:
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except (OSError, UnicodeDecodeError):
        return {}


def _holder(path: Path) -> str:
    fields = _fields(path)
    pid, host, since = fields.get("pid", "?"), fields.get("host", "?"), fields.get("started", "?")
    return f"process {pid} on {host} (since {since})"


class RunLock:
    """``with RunLock(out): ...`` holds ``out/.lock``; :class:`RunLockedError` when already held.

    Not re-entrant: a second lock on the same folder in one process is refused too (flock locks
    belong to open file descriptions), which is what a library caller running two pipelines on one
    folder needs to hear.
    """

    def __init__(self, out: str | os.PathLike, take_over_foreign: bool = False):
        self.path = Path(out) / LOCK_NAME
        self.take_over_foreign = take_over_foreign
        self._fd: Optional[int] = None
        self.previous: Optional[str] = None  # the stale holder taken over, for a log line

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{self.path.parent} is in use by another run: {_holder(self.path)} holds "
                    f"{self.path}. Wait for it to finish (or stop it), or use another --out") from None
            raise
        if os.fstat(fd).st_size:
            host = _fields(self.path).get("host")
            if host and host != socket.gethostname() and not self.take_over_foreign:
                os.close(fd)
                raise RunLockedError(
                    f"{self.path} was left by {_holder(self.path)}, another host: this host cannot "
                    f"tell whether that process still writes {self.path.parent}. If it has ended, "
                    f"rerun with --take-over-lock; else wait for it, or use another --out")
            self.previous = _holder(self.path)  # its process died without releasing: stale
        stamp = (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                 f"started={time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp, 0)
        self._fd = fd
        _HELD.add(self)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.discard(self)
        # Empty the file first: a later run then knows the folder was left cleanly.
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
