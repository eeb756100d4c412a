# -*- test-case-name: tests.test_server_tap -*-
"""
One server per data directory.

Two servers on one data directory would both write its events, mark each
other's clients offline and fight over the same TLS and host keys.  The
server therefore holds an exclusive ``flock`` on ``DATA_DIR/gotaxy.lock`` for
its whole life, with its pid written inside so that a second start can say
which process holds it.

``fcntl.flock`` from the standard library rather than a package such as
``filelock``: that package's Unix lock is this same ``flock`` call, without
the holder's pid, which is the part the message needs.  The kernel drops the
lock when the process ends however it ends (even ``kill -9``), so a stale
lock file is harmless and is never deleted (deleting it would let a third
process lock a new file while the second still holds the old one).

The ``gotaxy`` command does not take the lock: it works on the store while
the server runs, by design.
"""

from __future__ import annotations

import fcntl
import os
from typing import Optional

from gotaxy.process import StartError

LOCK_FILENAME = "gotaxy.lock"


class DataDirLock:
    """An exclusive lock on a data directory, held until ``release``."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd: Optional[int] = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: str) -> "DataDirLock":
        """Lock ``data_dir``; raise ``StartError`` naming the holder if another process has it."""
        path = os.path.join(data_dir, LOCK_FILENAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise StartError(
                f"the data directory {data_dir} is in use by another Gotaxy server ({who}); "
                "stop that server first, or give this one a data directory of its own (--data-dir)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        lock = cls(fd, path)
        lock.record_pid()
        return lock

    def record_pid(self) -> None:
        """Write this process's pid into the lock file (again after twistd forks into the background)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor drops the flock

    def __del__(self) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
