"""Atomic file writes: a reader (or a killed run) never sees a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error removed.

    The temporary file lives in the same folder (so ``os.replace`` is atomic on POSIX and Windows) and keeps the
    destination's extension (so writers that infer the format from the name, PIL or safetensors, still work).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    ext = suffix if suffix is not None else os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".partial{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give it the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _current_umask() -> int:
    # os.umask can only be read by setting it; do that once, not on every write (other threads create files too).
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op off POSIX (Windows cannot open folders for
    fsync; NTFS journals the rename)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def os_error_text(exc: OSError) -> str:
    """An OSError -> one line: its reason (``No space left on device``), without errno noise or a traceback."""
    return exc.strerror or str(exc) or type(exc).__name__


def prepare_output_dir(path: str | os.PathLike, name: str = "--out") -> str:
    """Make sure ``path`` is a folder this process can write into (creating it and its parents) -> its absolute path.

    Checked up front, before any work: ``ValueError`` naming ``name`` when ``path`` is an existing file, cannot be
    created (``/proc/x``, a missing drive, no permission) or is not writable (read-only file system, permissions). A
    disk that fills up later still fails at write time, with no partial file (:func:`atomic_path`).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name}: {path} is a file; expected a folder (or a new folder's name)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{name}: cannot create the folder {path}: {os_error_text(exc)}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as exc:
        raise ValueError(f"{name}: cannot write into {path}: {os_error_text(exc)}") from None
    return path
