"""An exclusive, crash-safe lock on a data-set folder: one writer per folder, across processes and hosts' pids.

The lock is an OS lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) on the file ``<folder>/.lock``,
held for the lifetime of a :class:`FolderLock`. The OS drops it when the holder closes it or dies, so a killed
run (SIGKILL, power loss of the process) never leaves a stale lock behind: the file stays, the lock does not. The
file holds the holder's pid, host and start time, for the message a refused second writer gets.
(``flock`` on network file systems is only as good as the file system's support for it.)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time

LOCK_NAME = ".lock"
_INFO_OFFSET = 1  # byte 0 is the locked byte on Windows (a locked range cannot be read there); info follows it


class DatasetLockedError(ValueError):
    """Another writer (another process, or another open writer) holds the data-set folder."""

    def __init__(self, folder: str, holder: dict | None):
        self.folder, self.holder = folder, holder or {}
        pid, host = self.holder.get("pid"), self.holder.get("host")
        who = f"pid {pid}" + (f" on {host}" if host else "") if pid is not None else "another process"
        since = self.holder.get("since")
        when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
        super().__init__(
            f"{folder}: this data set is being written by another writer ({who}{when}); only one writer per folder "
            "at a time (two would mix their samples). "
            + ("It is open in this process: share it with dataset.open_writer(folder)" if self.holder.get("here")
               else "Wait for it to finish or stop it, or write to another folder"))


def _try_lock(fd: int) -> bool:
    """Non-blocking exclusive lock on ``fd``; False if another open file holds it."""
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def read_holder(folder: str) -> dict | None:
    """The pid / host / since recorded in ``folder``'s lock file (None if absent or unreadable)."""
    try:
        with open(os.path.join(folder, LOCK_NAME), "rb") as f:
            f.seek(_INFO_OFFSET)
            info = json.loads(f.read(4096).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class FolderLock:
    """Take the exclusive lock of ``folder`` (which must exist) now; :class:`DatasetLockedError` if it is held.

    ``OSError`` if the lock file cannot be created (a read-only folder, say). Release with :meth:`release` (or let
    the process end: the OS releases it).
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: int | None = None
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _try_lock(fd):
                    raise DatasetLockedError(folder, read_holder(folder))
                # The file we locked must still be the one at the path (someone may have deleted and recreated it).
                st = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    _unlock(fd)
                    os.close(fd)
                    continue
                info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time())})
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                data = b" " * _INFO_OFFSET + info.encode("utf-8") + b"\n"
                while data:
                    data = data[os.write(fd, data):]
            except BaseException:
                if self._fd is None:
                    os.close(fd)
                raise
            self._fd = fd
            return
        raise DatasetLockedError(folder, read_holder(folder))  # pragma: no cover - the file kept being replaced

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (the lock file stays; its content no longer matters)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _unlock(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
