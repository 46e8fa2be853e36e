"""Matting data-set writer: per-sample atomic commit into ``image/ fg/ alpha/ trimap/ caption/`` + ``metadata.jsonl``.

Commit protocol (one writer per folder at a time):
1. every file of the sample is written (and fsynced) into ``.staging/<name>/``;
2. a marker ``.pending/<name>.json`` lists the destination paths;
3. the staged files are renamed into place (``os.replace``, same file system);
4. the sample's row is appended to ``metadata.jsonl`` and fsynced: this line IS the commit;
5. the marker and the staging folder are removed.
On open, :meth:`MattingDatasetWriter.recover` truncates a torn last row, deletes the destination files of every
pending sample that has no row (roll back), and clears ``.staging``; so a killed run never leaves a partial sample.
Rejected samples (quality gate) are not written; their row goes to ``rejected.jsonl`` so a resumed run counts
them and does not redo them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import torch

from ..common.keycolour import parse_key_colour
from ..common.files import atomic_write_text
from ..common.images import save_png
from .quality import QualityThresholds, gate, quality_scores
from .trimap import make_trimap

FOLDERS = ("image", "fg", "alpha", "trimap", "caption")
METADATA = "metadata.jsonl"
REJECTED = "rejected.jsonl"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")


@dataclass
class SampleResult:
    name: str
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


def _read_rows(path: str, repair: bool) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (no newline / bad JSON, from a killed run) is cut off if ``repair``."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    rows, good_end, pos = [], 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl].strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        pos = good_end = nl + 1
    if good_end < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return rows


def _append_row(path: str, row: dict) -> None:
    line = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MattingDatasetWriter:
    """Writes (green image, straight fg, alpha) samples with trimap, caption and metadata into ``root``.

    ``alpha_bits``: 8 or 16 for ``alpha/*.png``. ``thresholds``: the quality gate (``None`` = defaults);
    ``gate_enabled=False`` keeps every sample but still records its scores.
    """

    def __init__(self, root: str | os.PathLike, alpha_bits: int = 8, thresholds: QualityThresholds | None = None,
                 trimap_radius: int = 10, gate_enabled: bool = True):
        if alpha_bits not in (8, 16):
            raise ValueError(f"alpha_bits: expected 8 or 16, got {alpha_bits}")
        self.root = os.path.abspath(os.fspath(root))
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ValueError(f"{self.root}: exists and is not a folder")
        self.alpha_bits = alpha_bits
        self.thresholds = thresholds or QualityThresholds()
        self.trimap_radius = trimap_radius
        self.gate_enabled = gate_enabled
        for folder in FOLDERS:
            os.makedirs(os.path.join(self.root, folder), exist_ok=True)
        self.recover()

    # -- state -------------------------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Roll back samples a killed run left uncommitted; returns their names. Loads committed/rejected names."""
        rows = _read_rows(os.path.join(self.root, METADATA), repair=True)
        rejected = _read_rows(os.path.join(self.root, REJECTED), repair=True)
        self.committed = {r["name"]: r for r in rows if "name" in r}
        self.rejected = {r["name"]: r for r in rejected if "name" in r}
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
                    except (OSError, ValueError, KeyError):
                        paths = []
                    for rel in paths:
                        target = os.path.join(self.root, rel)
                        if os.path.isfile(target):
                            os.remove(target)
                    rolled_back.append(name)
                os.remove(marker)
        shutil.rmtree(os.path.join(self.root, ".staging"), ignore_errors=True)
        return rolled_back

    def __contains__(self, name: str) -> bool:
        return name in self.committed or name in self.rejected

    @property
    def counts(self) -> dict[str, int]:
        """Accepted / rejected totals and rejections per reason."""
        out = {"accepted": len(self.committed), "rejected": len(self.rejected)}
        for row in self.rejected.values():
            for reason in row.get("reasons", []):
                out[f"rejected_{reason}"] = out.get(f"rejected_{reason}", 0) + 1
        return out

    def next_index(self, prefix: str) -> int:
        """First free ``n`` such that ``{prefix}_{n:06d}`` is neither committed nor rejected."""
        pat = re.compile(re.escape(prefix) + r"_(\d+)$")
        used = [int(m.group(1)) for n in (*self.committed, *self.rejected) if (m := pat.match(n))]
        return max(used, default=-1) + 1

    # -- writing -----------------------------------------------------------------------------------------------
    def write(self, name: str, image: torch.Tensor, fg: torch.Tensor, alpha: torch.Tensor, key_colour,
              caption: str = "", meta: dict | None = None) -> SampleResult:
        """image [3,H,W] (green), fg [3,H,W] straight, alpha [1,H,W] (1 = opaque), all in [0,1], key_colour a KeyColour
        (or a [3] tensor, a preset, a hex colour) -> result.

        Scores the sample, and commits it atomically unless the quality gate rejects it (then only its row is added
        to ``rejected.jsonl``). ``meta`` (prompt, seed, model, ...) is stored in its ``metadata.jsonl`` row.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"name: {name!r} must be 1-121 characters of letters, digits, '_', '-', '.'")
        if name in self:
            raise ValueError(f"name: sample {name!r} already exists in {self.root}")
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
        key = parse_key_colour(key_colour, "key_colour")
        scores = quality_scores(fg[None], alpha[None], key, self.thresholds)[0]
        reasons = gate(scores, self.thresholds) if self.gate_enabled else []
        row = {
            **(meta or {}),
            "name": name,
            "caption": caption,
            "key_colour": key.hex,
            "key_source": key.source,
            **({"key_preset": key.preset} if key.preset else {}),
            "width": int(image.shape[-1]),
            "height": int(image.shape[-2]),
            "scores": {k: round(v, 6) for k, v in scores.items()},
        }
        if reasons:
            row["reasons"] = reasons
            _append_row(os.path.join(self.root, REJECTED), row)
            self.rejected[name] = row
            return SampleResult(name, False, reasons, scores)
        files = {
            "image": f"image/{name}.png",
            "fg": f"fg/{name}.png",
            "alpha": f"alpha/{name}.png",
            "trimap": f"trimap/{name}.png",
            "caption": f"caption/{name}.txt",
        }
        row["files"] = files
        self._commit(name, files, image, fg, alpha, caption, row)
        self.committed[name] = row
        return SampleResult(name, True, [], scores)

    def _commit(self, name, files, image, fg, alpha, caption, row) -> None:
        staging_root = os.path.join(self.root, ".staging")
        os.makedirs(staging_root, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=f"{name}.", dir=staging_root)
        committed = False
        try:
            staged = {key: os.path.join(stage, key + os.path.splitext(rel)[1]) for key, rel in files.items()}
            save_png(staged["image"], image, None, bits=8)
            save_png(staged["fg"], fg, None, bits=8)
            save_png(staged["alpha"], None, alpha, bits=self.alpha_bits)
            save_png(staged["trimap"], None, make_trimap(alpha[None], radius=self.trimap_radius)[0], bits=8)
            atomic_write_text(staged["caption"], caption + "\n")
            pending_dir = os.path.join(self.root, ".pending")
            os.makedirs(pending_dir, exist_ok=True)
            atomic_write_text(os.path.join(pending_dir, f"{name}.json"), json.dumps({"files": list(files.values())}))
            for key, rel in files.items():
                os.replace(staged[key], os.path.join(self.root, rel))
            for folder in {os.path.dirname(rel) for rel in files.values()}:
                _fsync_dir(os.path.join(self.root, folder))
            _append_row(os.path.join(self.root, METADATA), row)
            committed = True
            os.remove(os.path.join(pending_dir, f"{name}.json"))
        except BaseException:
            # Roll back in-process too (a killed process is rolled back by recover() on the next open).
            if not committed:
                for rel in files.values():
                    target = os.path.join(self.root, rel)
                    if os.path.isfile(target):
                        os.remove(target)
                marker = os.path.join(self.root, ".pending", f"{name}.json")
                if os.path.isfile(marker):
                    os.remove(marker)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def write_stats(self) -> dict:
        """Write ``stats.json`` (counts, thresholds) atomically and return it."""
        from dataclasses import asdict

        stats = {"counts": self.counts, "thresholds": asdict(self.thresholds)}
        atomic_write_text(os.path.join(self.root, "stats.json"), json.dumps(stats, indent=2, sort_keys=True) + "\n")
        return stats
