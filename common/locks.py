"""One writer per run folder: an exclusive ``flock`` on a lock file, released by the kernel when its
process ends (a crash or kill -9 leaves nothing stuck), holding the owner's host and pid so a second
writer's one line names who has it.

The store's lock (``common.store.StoreLock``) is a file of its own because a store may sit on an
object store where ``flock`` does not exist; run folders are always local.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from orthosae.common.errors import UserError, naming

LOCK_FILE = ".orthosae-lock"  # hidden: digests.covered_files never counts it


class LockedError(UserError):
    """Another process holds the lock: one line naming the holder and the lock file."""


class FolderLock:
    """``with FolderLock(folder, what):`` holds ``folder/.orthosae-lock`` for the block."""

    def __init__(self, folder: Path, what: str):
        self.path, self.what = Path(folder) / LOCK_FILE, what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockedError(
                f"{self.what}: another `pipe` process writes it (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('since', '?')}; lock {self.path}); "
                "wait for it to finish or stop it"
            ) from None
        self._fd = fd
        try:
            with naming(self.path):  # a full disk: one line naming the lock file
                os.ftruncate(fd, 0)
                os.write(
                    fd,
                    json.dumps(
                        {
                            "pid": os.getpid(),
                            "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        }
                    ).encode(),
                )
        except OSError:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # left empty: a folder reads the same before and after a command
            os.close(self._fd)  # closing the last descriptor drops the flock; the file stays (harmless)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
