"""Atomic file writes: a reader (or a killed run) never sees a partial file."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator

TEMP_RANDOM = 8  # characters tempfile.mkstemp puts between the prefix and the suffix
TEMP_MARK = ".partial"


class FileNameTooLong(OSError, ValueError):
    """A destination whose file name is longer than the file system allows: a one-line message naming the file.

    Both an ``OSError`` (errno ``ENAMETOOLONG``, so write handlers still see a write failure) and a ``ValueError``
    (the pack's bad-input error: nodes surface it as-is, the CLI reports that one input and carries on)."""

    def __init__(self, path: str, nbytes: int, limit: int):
        msg = (f"{path}: the file name {os.path.basename(path)[:40]!r}... is {nbytes} bytes long; this file system "
               f"allows at most {limit} bytes per name (choose a shorter name or prefix)")
        super().__init__(errno.ENAMETOOLONG, msg)
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (in bytes) the file system of ``folder`` allows; 255 when it cannot be told."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return 255


def check_name_length(path: str | os.PathLike, limit: int | None = None) -> None:
    """Raise :class:`FileNameTooLong` when ``path``'s file name does not fit the file system (``limit`` bytes)."""
    path = os.fspath(path)
    if limit is None:
        folder = os.path.dirname(os.path.abspath(path))
        limit = name_max(folder if os.path.isdir(folder) else os.path.dirname(folder) or ".")
    nbytes = len(os.fsencode(os.path.basename(path)))
    if nbytes > limit:
        raise FileNameTooLong(path, nbytes, limit)


def temp_prefix(base: str, ext: str, limit: int = 255) -> str:
    """The prefix of :func:`atomic_path`'s temporary name for the file ``base``: ``.<base>.``, with ``base`` cut
    short (whole characters) when the temporary name ``.<base>.XXXXXXXX.partial<ext>`` would pass ``limit`` bytes
    (hostile X1: a 245-byte name must still be writable)."""
    room = limit - len(os.fsencode(f"..{TEMP_MARK}{ext}")) - TEMP_RANDOM
    stem = base
    while stem and len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return f".{stem}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error removed.

    The temporary file lives in the same folder (so ``os.replace`` is atomic on POSIX and Windows) and keeps the
    destination's extension (so writers that infer the format from the name, PIL or safetensors, still work); its
    name is ``.<name>.XXXXXXXX.partial<ext>``, ``<name>`` cut short when that would be too long for the file system.
    A destination name longer than the file system allows raises :class:`FileNameTooLong` (a ``ValueError`` and an
    ``OSError``) before anything is written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    limit = name_max(folder)
    check_name_length(path, limit)
    ext = suffix if suffix is not None else os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(base, ext, limit), suffix=f"{TEMP_MARK}{ext}", dir=folder)
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
