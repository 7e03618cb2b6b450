"""One `cmr-synth run` per run directory at a time.

Two runs in one folder train the same units twice and reset each other's unit folders mid-training. So a run
holds RUN_DIR/.lock from start to exit, and a second run is refused at once with one line naming the holder.

The lock is `flock` on that file rather than a file created with O_CREAT|O_EXCL: the kernel drops a flock when
its process dies, however it dies (kill -9, out of memory), so staleness needs no guess from pids or clocks. A
lock file that is there but not locked was left by a run that is gone; the next run takes it over and says so.
The file records the holder (pid, host, start time) for those messages. (On NFS, Linux implements flock with
the server's byte-range locks, so runs on different machines exclude each other too.)
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

from data.io import writing
from pipeline.errors import RunDirLocked

LOCK_NAME = ".lock"
# Set by the process that holds the lock for the torchrun processes it starts, so that they run under it.
HELD_ENV = "CMR_SYNTH_RUN_LOCK"
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a file system without flock (some FUSE mounts)


class RunLock:
    """The held lock of one run directory; `stale` is the record a run that died with it left behind."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.stale: dict | None = None
        self.unsupported = False  # the file system has no locks: the run goes on, unguarded, and says so

    def acquire(self) -> "RunLock":
        with writing(self.path):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while self.fd is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read(fd)
                    os.close(fd)
                    raise RunDirLocked(f"run directory {self.run_dir} is in use by another cmr-synth run "
                                       f"({describe(holder)}); wait for it to end or choose another --run-dir"
                                       ) from None
                except OSError as exc:
                    if exc.errno not in NO_LOCKS:
                        os.close(fd)
                        raise
                    self.unsupported = True
                if _same_file(fd, self.path):
                    self.fd = fd
                else:  # its holder removed the file while we opened it: lock the one that is there now
                    os.close(fd)
            self.stale = _read(self.fd) or None
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                      "command": " ".join(sys.argv)}
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (json.dumps(record) + "\n").encode(), 0)
        return self

    def notice(self) -> str | None:
        """What to tell the user: a lock taken over from a run that is gone, or no locking here (else None)."""
        if self.unsupported:
            return (f"run directory {self.run_dir}: its file system does not support file locks, so a second run "
                    f"on it at the same time would not be refused")
        if self.stale is None:
            return None
        return (f"run directory {self.run_dir}: taking over the lock left by a run that is gone "
                f"({describe(self.stale)}); its finished units are kept and its unfinished ones resume")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()  # before unlocking: a waiter that got the old file sees it is gone
        finally:
            os.close(self.fd)  # drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "holder not recorded yet"
    return f"pid {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _read(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)
