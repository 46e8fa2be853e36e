"""Matting data-set writer: per-sample atomic commit into ``image/ fg/ alpha/ trimap/ caption/`` + ``metadata.jsonl``.

One writer per folder: a writer holds the folder's exclusive lock (``.lock``, see :mod:`dataset.lock`) from open
to :meth:`MattingDatasetWriter.close`; a second writer, in another process or this one, is refused with an error
naming the holder's pid. Within one process, :func:`open_writer` hands out the process's open writer of a folder
(so the data factory and its SaveMattingDataset node share one writer and one in-memory state). The OS drops the
lock when the process dies, so a killed run never blocks the next.

Commit protocol:
1. every file of the sample is written (and fsynced) into ``.staging/<name>/``;
2. a marker ``.pending/<name>.json`` lists the destination paths;
3. the staged files are renamed into place (``os.replace``, same file system);
4. the sample's row (one JSON line, newline included) is appended to ``metadata.jsonl`` and fsynced: this IS the
   commit;
5. the marker and the staging folder are removed.
On open (holding the lock), :meth:`MattingDatasetWriter.recover` cuts off a torn last row (no final newline: a
killed append), deletes the destination files of every pending sample that has no row (roll back), and clears
``.staging``; so a killed run never leaves a partial sample. A bad row anywhere else is an error naming the file
and line, and nothing is changed. Rejected samples (quality gate) are not written; their row goes to
``rejected.jsonl`` so a resumed run counts them and does not redo them. Samples a generator could not make at all
(the data factory gave up after its retries) are recorded in ``failed.jsonl`` (``name``, ``reason``, ``attempts`` and
the sample's plan: ``prompt``, ``seed``, ``index``) so a resumed run skips them too; ``failed.jsonl`` is an added file
(older readers ignore it) and deleting a line of it lets the factory retry that sample.

Preparing and committing are two steps (:func:`prepare_sample`: score, gate, encode the files, in memory;
:meth:`MattingDatasetWriter.commit_prepared`: the commit protocol above), so a sample can be prepared in another
process (a data-factory worker) and committed by the one writer. In such a process, :func:`capture_samples` stands in
for the folder's writer: whatever :func:`open_writer` users (the SaveMattingDataset node) write to that folder is
prepared and kept in memory, and nothing is written to the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import types
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import torch

from ..common.files import atomic_write_bytes, atomic_write_text, fsync_dir
from ..common.images import encode_png
from ..common.keycolour import as_key_colour, parse_key_colour
from .lock import LOCK_NAME, DatasetLockedError, FolderLock
from .quality import QualityThresholds, gate, quality_scores
from .trimap import MAX_TRIMAP_RADIUS, make_trimap

FOLDERS = ("image", "fg", "alpha", "trimap", "caption")
METADATA = "metadata.jsonl"
REJECTED = "rejected.jsonl"
FAILED = "failed.jsonl"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")

@dataclass
class SampleResult:
    name: str
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedSample:
    """A scored sample ready to commit: its row and (if accepted) its encoded files; plain data, picklable."""

    name: str
    accepted: bool
    reasons: list[str]
    scores: dict[str, float]
    row: dict
    files: dict[str, bytes]  # path relative to the data-set folder -> file bytes (empty when rejected)
    thresholds: dict  # the gate's thresholds it was scored with (``QualityThresholds`` fields), for stats.json

    @property
    def result(self) -> SampleResult:
        return SampleResult(self.name, self.accepted, list(self.reasons), dict(self.scores))


def _read_rows(path: str, repair: bool) -> list[dict]:
    """Rows of a JSON-lines file. Only a torn LAST line (bytes after the final newline: a killed append) is cut off,
    and only if ``repair``; a bad line anywhere else raises ``ValueError`` naming the file and line (nothing changed).
    """
    return [row for _, row in _read_numbered(path, repair)]


def _read_numbered(path: str, repair: bool = False) -> list[tuple[int, dict]]:
    """:func:`_read_rows` with each row's line number: ``[(line, row), ...]``."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    *lines, tail = data.split(b"\n")
    rows = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            row = None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object row (a hand edit, or a damaged file); "
                             "fix or delete that line, nothing was changed")
        rows.append((number, row))
    if tail and repair:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(tail))
            f.flush()
            os.fsync(f.fileno())
    return rows


def _append_row(path: str, row: dict) -> None:
    """Append one JSON line and fsync it; a short write is continued, a failed one is cut back off (or raised)."""
    line = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, f"{path}: the row could not be written (write returned {n})")
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            try:  # leave no torn row in the middle of the file for the next append to follow
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                pass  # then it is the torn last line the next open repairs
            raise
    finally:
        os.close(fd)


def _realpath(root) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(root)))


def _process_registry():
    """The open writers of this process by the folder's real path (weak: a dropped writer releases its folder), and
    its mutex. Kept in ``sys.modules`` under a fixed name because this package is imported twice in one process
    (as ``diffumatting`` by the CLI, and under its folder name by ComfyUI), and both copies must share one writer
    per folder."""
    reg = sys.modules.get(_REGISTRY)
    if reg is None:
        reg = types.ModuleType(_REGISTRY, "DiffuMatting: the process's open data-set writers")
        reg.writers = weakref.WeakValueDictionary()
        reg.mutex = threading.RLock()
        reg = sys.modules.setdefault(_REGISTRY, reg)
    if not hasattr(reg, "captures"):
        reg.captures = {}  # folder real path -> SampleCapture (capture_samples); wins over a writer of that folder
    return reg


_REGISTRY = "_diffumatting_dataset_writers"
_OPEN = _process_registry().writers
_OPEN_MUTEX = _process_registry().mutex
_CAPTURES = _process_registry().captures


def open_writer(root: str | os.PathLike, **settings) -> "MattingDatasetWriter":
    """The process's open writer of ``root`` (shared, its use count raised), or a new one opened with ``settings``.

    Every call must be paired with a :meth:`MattingDatasetWriter.close` (or use it as a context manager); the
    folder is unlocked when the last user closes it. A shared writer keeps the settings it was opened with: pass
    per-sample settings to :meth:`MattingDatasetWriter.write`. :class:`DatasetLockedError` if another process holds
    the folder; ``ValueError`` if the folder cannot be used. While :func:`capture_samples` holds ``root`` in this
    process, its capture is returned instead (nothing is written to the folder).
    """
    with _OPEN_MUTEX:
        capture = _CAPTURES.get(_realpath(root))
        if capture is not None:
            return capture
        writer = _OPEN.get(_realpath(root))
        if writer is not None and not writer.closed:
            writer._refs += 1
            return writer
        return MattingDatasetWriter(root, **settings)


def check_layout(root: str | os.PathLike) -> None:
    """Up front, before anything is created: the data set's files (``metadata.jsonl``, ``rejected.jsonl``,
    ``failed.jsonl``, ``stats.json``) are files and its sample folders folders, where they exist; ``ValueError``
    naming the one that is not (hostile X10: a folder named metadata.jsonl)."""
    root = os.fspath(root)
    for entry in (METADATA, REJECTED, FAILED, "stats.json"):
        path = os.path.join(root, entry)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise ValueError(f"{path}: is not a regular file (a folder or a device); the data set keeps its "
                             f"{entry} there, so move it away or choose another folder")
    for entry in FOLDERS:
        path = os.path.join(root, entry)
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ValueError(f"{path}: is not a folder; the data set keeps its {entry}/ files there, so move it away "
                             "or choose another folder")


def check_trimap_radius(radius, name: str = "trimap_radius") -> int:
    """An unknown-band half width: an int in [0, MAX_TRIMAP_RADIUS] -> it; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(radius, bool) or not isinstance(radius, int) or not 0 <= radius <= MAX_TRIMAP_RADIUS:
        raise ValueError(f"{name}: expected a whole number of pixels in 0..{MAX_TRIMAP_RADIUS}, got {radius!r}")
    return radius


def check_text(value, name: str) -> str:
    """A caption / metadata string -> it; ``ValueError`` naming ``name`` when it is not a string or cannot be stored
    as UTF-8 (a lone surrogate such as ``\\udcff``, which JSON and Python strings allow; hostile X9)."""
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name}: holds {value[exc.start]!r} at position {exc.start}, a lone surrogate that is not "
                         "valid Unicode text and cannot be stored as UTF-8; remove it") from None
    return value


def _check_name(name) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name: {name!r} must be 1-121 characters of letters, digits, '_', '-', '.'")


def prepare_sample(name: str, image: torch.Tensor, fg: torch.Tensor, alpha: torch.Tensor, key_colour,
                   caption: str = "", meta: dict | None = None, *, alpha_bits: int = 8,
                   thresholds: QualityThresholds | None = None, trimap_radius: int = 10,
                   gate_enabled: bool = True) -> PreparedSample:
    """image [3,H,W] (green), fg [3,H,W] straight, alpha [1,H,W] (1 = opaque) in [0,1], key_colour -> PreparedSample
    (scores, gate verdict, row, and for an accepted sample its PNGs/caption encoded in memory); writes nothing."""
    if alpha_bits not in (8, 16):
        raise ValueError(f"alpha_bits: expected 8 or 16, got {alpha_bits}")
    _check_name(name)
    thresholds = (thresholds or QualityThresholds()).checked()
    trimap_radius = check_trimap_radius(trimap_radius)
    for arg, t, c in (("image", image, 3), ("fg", fg, 3), ("alpha", alpha, 1)):
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != c:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{arg}: expected a [{c},H,W] tensor, got {shape}")
    if not (image.shape[1:] == fg.shape[1:] == alpha.shape[1:]):
        raise ValueError(f"image {tuple(image.shape)}, fg {tuple(fg.shape)}, alpha {tuple(alpha.shape)}: sizes differ")
    for arg, t in (("image", image), ("fg", fg), ("alpha", alpha)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{arg}: contains NaN or infinite values")
    image, fg, alpha = image.detach().float().cpu(), fg.detach().float().cpu(), alpha.detach().float().cpu()
    if isinstance(key_colour, torch.Tensor):
        key_colour = key_colour.detach().float().cpu().reshape(-1)
    else:  # also a KeyColour of the pack's other import (ComfyUI's copy of it, when the CLI shares its writer)
        key_colour = as_key_colour(key_colour) or key_colour
    check_text(caption, "caption")
    for k, v in (meta or {}).items():
        if isinstance(v, str):
            check_text(v, k)
    key = parse_key_colour(key_colour, "key_colour")
    scores = quality_scores(fg[None], alpha[None], key, thresholds)[0]
    reasons = gate(scores, thresholds) if gate_enabled else []
    row = {
        **(meta or {}),
        "name": name,
        "caption": caption,
        "key_colour": key.hex,
        "key_source": key.source,
        "key_label": key.label,
        **({"key_preset": key.preset} if key.preset else {}),
        "width": int(image.shape[-1]),
        "height": int(image.shape[-2]),
        "scores": {k: round(v, 6) for k, v in scores.items()},
    }
    # plain values only (the caller may be ComfyUI's import of the pack, and the sample may travel to another process)
    limits = {f.name: getattr(thresholds, f.name) for f in fields(QualityThresholds)}
    scores = {k: float(v) for k, v in scores.items()}
    if reasons:
        row["reasons"] = list(reasons)
        return PreparedSample(name, False, list(reasons), scores, row, {}, limits)
    paths = {key_: f"{key_}/{name}.{'txt' if key_ == 'caption' else 'png'}" for key_ in FOLDERS}
    row["files"] = paths
    files = {
        paths["image"]: encode_png(image, None, bits=8),
        paths["fg"]: encode_png(fg, None, bits=8),
        paths["alpha"]: encode_png(None, alpha, bits=alpha_bits),
        paths["trimap"]: encode_png(None, make_trimap(alpha[None], radius=trimap_radius)[0], bits=8),
        paths["caption"]: (caption + "\n").encode("utf-8"),
    }
    return PreparedSample(name, True, [], scores, row, files, limits)


class SampleCapture:
    """Stands in for a data-set folder's writer in a process that must not write it (see :func:`capture_samples`):
    samples written to it are prepared (:func:`prepare_sample`) and kept in :attr:`samples`, in order."""

    def __init__(self, root: str | os.PathLike, alpha_bits: int = 8, thresholds: QualityThresholds | None = None,
                 trimap_radius: int = 10, gate_enabled: bool = True):
        self.root = _realpath(root)
        self.alpha_bits, self.thresholds = alpha_bits, (thresholds or QualityThresholds()).checked()
        self.trimap_radius, self.gate_enabled = trimap_radius, gate_enabled
        self.samples: list[PreparedSample] = []
        self.closed = False

    def __contains__(self, name: str) -> bool:
        return any(p.name == name for p in self.samples)

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.samples}

    @property
    def counts(self) -> dict[str, int]:
        accepted = sum(p.accepted for p in self.samples)
        return {"accepted": accepted, "rejected": len(self.samples) - accepted}

    def next_index(self, prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"_(\d+)$")
        return max((int(m.group(1)) for n in self.names if (m := pat.match(n))), default=-1) + 1

    def write(self, name, image, fg, alpha, key_colour, caption: str = "", meta: dict | None = None, *,
              alpha_bits=None, thresholds=None, trimap_radius=None, gate_enabled=None) -> SampleResult:
        """Same contract as :meth:`MattingDatasetWriter.write`; the sample is kept here instead of written."""
        if name in self:
            raise ValueError(f"name: sample {name!r} was already written in this run")
        prepared = prepare_sample(
            name, image, fg, alpha, key_colour, caption, meta,
            alpha_bits=self.alpha_bits if alpha_bits is None else alpha_bits,
            thresholds=self.thresholds if thresholds is None else thresholds,
            trimap_radius=self.trimap_radius if trimap_radius is None else trimap_radius,
            gate_enabled=self.gate_enabled if gate_enabled is None else gate_enabled)
        self.samples.append(prepared)
        return prepared.result

    def write_stats(self, thresholds: QualityThresholds | None = None) -> dict:
        """The captured counts (nothing is written: the committing writer keeps ``stats.json``)."""
        return {"counts": self.counts, "thresholds": asdict((thresholds or self.thresholds))}

    def close(self) -> None:
        """Nothing to release (the capture stays registered until :func:`capture_samples` ends)."""

    def __enter__(self) -> "SampleCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def capture_samples(root: str | os.PathLike) -> Iterator[SampleCapture]:
    """While open, :func:`open_writer` of ``root`` in this process returns one :class:`SampleCapture` (this one):
    samples are prepared and kept in memory, nothing is written to ``root``. ``ValueError`` if ``root`` is already
    being captured."""
    capture = SampleCapture(root)
    with _OPEN_MUTEX:
        if capture.root in _CAPTURES:
            raise ValueError(f"{capture.root}: samples of this folder are already being captured in this process")
        _CAPTURES[capture.root] = capture
    try:
        yield capture
    finally:
        with _OPEN_MUTEX:
            _CAPTURES.pop(capture.root, None)
            capture.closed = True


class MattingDatasetWriter:
    """Writes (green image, straight fg, alpha) samples with trimap, caption and metadata into ``root``.

    Opening takes the folder's lock (:class:`DatasetLockedError` if another writer holds it; use :func:`open_writer`
    to share this process's writer) and recovers what a killed run left. ``alpha_bits``: 8 or 16 for
    ``alpha/*.png``. ``thresholds``: the quality gate (``None`` = defaults); ``gate_enabled=False`` keeps every
    sample but still records its scores. ``ValueError`` naming the folder if it cannot be created or written.
    """

    def __init__(self, root: str | os.PathLike, alpha_bits: int = 8, thresholds: QualityThresholds | None = None,
                 trimap_radius: int = 10, gate_enabled: bool = True):
        if alpha_bits not in (8, 16):
            raise ValueError(f"alpha_bits: expected 8 or 16, got {alpha_bits}")
        self.alpha_bits = alpha_bits
        self.thresholds = (thresholds or QualityThresholds()).checked()
        self.trimap_radius = check_trimap_radius(trimap_radius)
        self.gate_enabled = gate_enabled
        self.root = _realpath(root)
        self.committed: dict[str, dict] = {}
        self.rejected: dict[str, dict] = {}
        self.failed: dict[str, dict] = {}
        self._lock: FolderLock | None = None
        self._refs = 0
        self._mutex = threading.RLock()
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ValueError(f"{self.root}: exists and is not a folder")
        check_layout(self.root)
        with _OPEN_MUTEX:
            other = _OPEN.get(self.root)
            if other is not None and not other.closed:
                raise DatasetLockedError(self.root, {"pid": os.getpid(), "here": True})
            try:
                os.makedirs(self.root, exist_ok=True)
                self._lock = FolderLock(self.root)
            except OSError as exc:
                raise ValueError(f"{self.root}: cannot write a data set here: {exc.strerror or exc}") from None
            try:
                for folder in FOLDERS:
                    os.makedirs(os.path.join(self.root, folder), exist_ok=True)
                self.recover()
            except OSError as exc:
                self._lock.release()
                raise ValueError(f"{self.root}: cannot write a data set here: {exc.strerror or exc}") from None
            except BaseException:
                self._lock.release()
                raise
            self._refs = 1
            _OPEN[self.root] = self

    # -- lifetime ----------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._lock is None or not self._lock.held

    def close(self) -> None:
        """Done with this writer: the folder is unlocked once every :func:`open_writer` user has closed it."""
        with _OPEN_MUTEX:
            if self.closed:
                return
            self._refs -= 1
            if self._refs > 0:
                return
            if _OPEN.get(self.root) is self:
                del _OPEN[self.root]
            self._lock.release()

    def discard_if_empty(self) -> bool:
        """Close this writer and, if it was the folder's last user and the folder holds nothing but this writer's
        empty scaffolding (no sample, no other file), remove the folder. -> whether it was removed. For a command
        that created ``root`` and then failed before its first sample."""
        with _OPEN_MUTEX:
            if self.closed:
                return False
            if self._refs > 1 or self.names:
                self.close()
                return False
            scaffolding = {*FOLDERS, ".staging", ".pending", LOCK_NAME}
            try:
                entries = os.listdir(self.root)
                empty = set(entries) <= scaffolding and not any(
                    os.listdir(os.path.join(self.root, e)) for e in entries
                    if e != LOCK_NAME and os.path.isdir(os.path.join(self.root, e)))
                if not empty:
                    self.close()
                    return False
                for e in entries:
                    if e != LOCK_NAME:
                        os.rmdir(os.path.join(self.root, e))
                os.remove(os.path.join(self.root, LOCK_NAME))  # while still holding it: nobody else can be in
            except OSError:
                self.close()
                return False
            self.close()
            try:
                os.rmdir(self.root)  # fails harmlessly if another writer got in meanwhile
            except OSError:
                return False
            return True

    def __enter__(self) -> "MattingDatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.root}: this data-set writer is closed")

    # -- state -------------------------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Roll back samples a killed run left uncommitted; returns their names. Loads committed/rejected names.

        Runs only while this writer holds the folder's lock (it does on open). ``ValueError`` naming the file and
        line if ``metadata.jsonl`` / ``rejected.jsonl`` / ``failed.jsonl`` hold a bad row other than a torn last one (nothing changed).
        """
        self._check_open()
        with self._mutex:
            paths = [os.path.join(self.root, f) for f in (METADATA, REJECTED, FAILED)]
            # every file checked before anything is changed
            self._check_rows({path: _read_numbered(path) for path in paths})
            rows, rejected, failed = (_read_rows(path, repair=True) for path in paths)
            self.committed = {r["name"]: r for r in rows if "name" in r}
            self.rejected = {r["name"]: r for r in rejected if "name" in r}
            self.failed = {r["name"]: r for r in failed if "name" in r}
            rolled_back = []
            pending_dir = os.path.join(self.root, ".pending")
            if os.path.isdir(pending_dir):
                for entry in sorted(os.listdir(pending_dir)):
                    marker = os.path.join(pending_dir, entry)
                    name = entry[: -len(".json")] if entry.endswith(".json") else None
                    if name is not None and name not in self.committed:
                        try:
                            with open(marker, encoding="utf-8") as f:
                                paths = json.load(f)["files"]
                        except (OSError, ValueError, KeyError, TypeError):
                            paths = []
                        for rel in paths:
                            target = os.path.realpath(os.path.join(self.root, str(rel)))
                            inside = os.path.commonpath((self.root, target)) == self.root
                            if inside and os.path.isfile(target):
                                os.remove(target)
                        rolled_back.append(name)
                    if os.path.isfile(marker):
                        os.remove(marker)
            shutil.rmtree(os.path.join(self.root, ".staging"), ignore_errors=True)
            return rolled_back

    def _check_rows(self, numbered: dict[str, list[tuple[int, dict]]]) -> None:
        """The rows of ``metadata.jsonl`` / ``rejected.jsonl`` / ``failed.jsonl`` describe what is on disk, or a
        ``ValueError`` names the file, the line and the fix (nothing changed; hostile X15): a sample name in two
        rows (a copied line), and an accepted row whose file is missing (deleted by hand)."""
        seen: dict[str, tuple[str, int]] = {}
        for path, rows in numbered.items():
            for number, row in rows:
                name = row.get("name")
                if not isinstance(name, str):
                    continue
                if name in seen:
                    first, line = seen[name]
                    where = f"line {line}" if first == path else f"{os.path.basename(first)} line {line}"
                    raise ValueError(f"{path}: line {number} repeats sample {name!r} (also on {where}; a hand edit "
                                     "or a copied line); delete one of the two rows, nothing was changed")
                seen[name] = (path, number)
                files = row.get("files") if os.path.basename(path) == METADATA else None
                if isinstance(files, dict):
                    missing = [str(rel) for rel in files.values()
                               if not os.path.isfile(os.path.join(self.root, str(rel)))]
                    if missing:
                        raise ValueError(f"{path}: line {number} (sample {name!r}) names {len(missing)} missing "
                                         f"file(s): {', '.join(missing[:3])}; restore them, or delete that row to "
                                         "drop the sample (and its other files); nothing was changed")

    def __contains__(self, name: str) -> bool:
        return name in self.committed or name in self.rejected or name in self.failed

    @property
    def names(self) -> set[str]:
        """Every sample name in the data set, committed, rejected or failed."""
        return set(self.committed) | set(self.rejected) | set(self.failed)

    def rows(self):
        """Every row, committed then rejected (dicts as stored)."""
        return [*self.committed.values(), *self.rejected.values()]

    @property
    def counts(self) -> dict[str, int]:
        """Accepted / rejected totals, rejections per reason, and ``failed`` (only when some sample failed)."""
        out = {"accepted": len(self.committed), "rejected": len(self.rejected)}
        for row in self.rejected.values():
            for reason in row.get("reasons", []):
                out[f"rejected_{reason}"] = out.get(f"rejected_{reason}", 0) + 1
        if self.failed:
            out["failed"] = len(self.failed)
        return out

    def next_index(self, prefix: str) -> int:
        """First free ``n`` such that ``{prefix}_{n:06d}`` is neither committed nor rejected."""
        pat = re.compile(re.escape(prefix) + r"_(\d+)$")
        used = [int(m.group(1)) for n in self.names if (m := pat.match(n))]
        return max(used, default=-1) + 1

    # -- writing -----------------------------------------------------------------------------------------------
    def write(self, name: str, image: torch.Tensor, fg: torch.Tensor, alpha: torch.Tensor, key_colour,
              caption: str = "", meta: dict | None = None, *, alpha_bits: int | None = None,
              thresholds: QualityThresholds | None = None, trimap_radius: int | None = None,
              gate_enabled: bool | None = None) -> SampleResult:
        """image [3,H,W] (green), fg [3,H,W] straight, alpha [1,H,W] (1 = opaque), all in [0,1], key_colour a KeyColour
        (or a [3] tensor, a preset, a hex colour) -> result.

        Scores the sample, and commits it atomically unless the quality gate rejects it (then only its row is added
        to ``rejected.jsonl``). ``meta`` (prompt, seed, model, source, ...) is stored in its row. The keyword
        settings override the writer's own for this sample (a shared writer serves callers with other settings).
        """
        with self._mutex:
            self._check_open()
            return self._write(name, image, fg, alpha, key_colour, caption, meta,
                               self.alpha_bits if alpha_bits is None else alpha_bits,
                               (self.thresholds if thresholds is None else thresholds).checked(),
                               check_trimap_radius(self.trimap_radius if trimap_radius is None else trimap_radius),
                               self.gate_enabled if gate_enabled is None else gate_enabled)

    def _write(self, name, image, fg, alpha, key_colour, caption, meta, alpha_bits, thresholds, trimap_radius,
               gate_enabled) -> SampleResult:
        _check_name(name)
        if name in self:
            raise ValueError(f"name: sample {name!r} already exists in {self.root}")
        prepared = prepare_sample(name, image, fg, alpha, key_colour, caption, meta, alpha_bits=alpha_bits,
                                  thresholds=thresholds, trimap_radius=trimap_radius, gate_enabled=gate_enabled)
        return self._commit_prepared(prepared)

    def commit_prepared(self, prepared: PreparedSample) -> SampleResult:
        """A :func:`prepare_sample` result (made here or in another process) -> committed with the protocol above
        (accepted), or its row added to ``rejected.jsonl`` (rejected). ``ValueError`` if the name is taken or a file
        path leaves the folder."""
        with self._mutex:
            self._check_open()
            _check_name(prepared.name)
            if prepared.name in self:
                raise ValueError(f"name: sample {prepared.name!r} already exists in {self.root}")
            return self._commit_prepared(prepared)

    def _commit_prepared(self, prepared: PreparedSample) -> SampleResult:
        name, row = prepared.name, dict(prepared.row)
        if not prepared.accepted:
            _append_row(os.path.join(self.root, REJECTED), row)
            self.rejected[name] = row
            return prepared.result
        for rel in prepared.files:
            target = os.path.realpath(os.path.join(self.root, rel))
            if os.path.commonpath((self.root, target)) != self.root or os.path.dirname(rel) not in FOLDERS:
                raise ValueError(f"{name}: file {rel!r} is not in one of the data set's folders ({', '.join(FOLDERS)})")
        self._commit(name, prepared.files, row)
        self.committed[name] = row
        return prepared.result

    def _commit(self, name: str, files: dict[str, bytes], row: dict) -> None:
        staging_root = os.path.join(self.root, ".staging")
        os.makedirs(staging_root, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=f"{name}.", dir=staging_root)
        committed = False
        try:
            staged = {rel: os.path.join(stage, f"{k}{os.path.splitext(rel)[1]}") for k, rel in enumerate(files)}
            for rel, data in files.items():
                atomic_write_bytes(staged[rel], data)  # fsynced before it is moved into place
            pending_dir = os.path.join(self.root, ".pending")
            os.makedirs(pending_dir, exist_ok=True)
            atomic_write_text(os.path.join(pending_dir, f"{name}.json"), json.dumps({"files": list(files)}))
            for rel in files:
                os.replace(staged[rel], os.path.join(self.root, rel))
            for folder in {os.path.dirname(rel) for rel in files}:
                fsync_dir(os.path.join(self.root, folder))
            _append_row(os.path.join(self.root, METADATA), row)
            committed = True
            os.remove(os.path.join(pending_dir, f"{name}.json"))
        except BaseException:
            # Roll back in-process too (a killed process is rolled back by recover() on the next open).
            if not committed:
                for rel in files:
                    target = os.path.join(self.root, rel)
                    if os.path.isfile(target):
                        os.remove(target)
                marker = os.path.join(self.root, ".pending", f"{name}.json")
                if os.path.isfile(marker):
                    os.remove(marker)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def record_failed(self, name: str, reason: str, meta: dict | None = None) -> dict:
        """Record that sample ``name`` could not be made (``reason``: one line) in ``failed.jsonl`` -> its row; a resumed
        run skips it like a committed one. ``ValueError`` if the name is taken."""
        with self._mutex:
            self._check_open()
            _check_name(name)
            if name in self:
                raise ValueError(f"name: sample {name!r} already exists in {self.root}")
            row = {**(meta or {}), "name": name, "status": "failed", "reason": str(reason)}
            _append_row(os.path.join(self.root, FAILED), row)
            self.failed[name] = row
            return row

    def forget_failed(self) -> list[str]:
        """Drop every ``failed.jsonl`` row (so those samples are made again) -> their names."""
        with self._mutex:
            self._check_open()
            names = sorted(self.failed)
            path = os.path.join(self.root, FAILED)
            if os.path.isfile(path):
                os.remove(path)
                fsync_dir(self.root)
            self.failed = {}
            return names

    def write_stats(self, thresholds: QualityThresholds | None = None) -> dict:
        """Write ``stats.json`` (counts, the gate's thresholds: ``thresholds`` or the writer's) atomically; return it."""
        with self._mutex:
            self._check_open()
            stats = {"counts": self.counts, "thresholds": asdict(thresholds or self.thresholds)}
            atomic_write_text(os.path.join(self.root, "stats.json"),
                              json.dumps(stats, indent=2, sort_keys=True) + "\n")
            return stats
