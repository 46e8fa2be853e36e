"""The one pair loader of the trainers: folders of (fg or image, alpha[, caption]) pairs.

Layouts read by :func:`scan_folder` (any mix, searched recursively):

- per-sample folders: ``<name>/{fg|foreground|image}.<ext>`` + ``<name>/alpha.<ext>`` [+ ``caption.txt``]
  (the layout of ``../shared/data/mattes`` and of :func:`synthetic.write_synthetic_folder`);
- parallel folders: ``<root>/{fg|image}/<stem>.<ext>`` + ``<root>/alpha/<stem>.<ext>`` [+ ``<root>/caption/<stem>.txt``
  or a ``<stem>.txt`` beside the image] (the layout of the data-set writer and of most matting sets).

:func:`load_pair` reads one (colour [3,H,W], alpha [1,H,W]); :func:`load_pairs` reads a whole folder into
:class:`Pair` objects (the head trainer, the benchmarks), raising a ValueError that names the bad file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
FG_NAMES = ("fg", "foreground")
IMAGE_NAMES = ("image", "img", "rgb")


@dataclass
class Sample:
    """One (colour, alpha[, caption]) source; ``colour`` is a straight fg or an original image."""

    colour: Path
    alpha: Path
    caption_file: Path | None
    folder_caption: str
    is_fg: bool
    name: str = ""  # the subject's name: its folder (per-sample layout) or file stem (parallel layout)


def _find_stem(folder: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        for ext in IMAGE_EXTS:
            p = folder / f"{n}{ext}"
            if p.is_file():
                return p
    return None


def clean_folder_caption(name: str) -> str:
    """Folder name -> caption words: separators become spaces, pure numbers and ids like ``GT01`` are dropped."""
    words = re.split(r"[\s_\-.]+", name)
    keep = [w for w in words if w and not re.fullmatch(r"[A-Za-z]{0,3}\d+", w)]
    return " ".join(keep).strip()


def scan_folder(root: str | os.PathLike) -> list[Sample]:
    """root: a data folder -> samples (sorted by path) in either supported layout; raises ValueError if none."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data: {root} is not a folder")
    samples: list[Sample] = []
    seen: set[Path] = set()
    for dirpath, dirnames, _files in os.walk(root):
        dirnames.sort()
        d = Path(dirpath)
        alpha = _find_stem(d, ("alpha", "matte", "mask"))
        if alpha is not None:
            fg = _find_stem(d, FG_NAMES)
            colour = fg or _find_stem(d, IMAGE_NAMES)
            if colour is not None:
                cap = d / "caption.txt"
                rel = d.relative_to(root).as_posix()
                samples.append(Sample(colour, alpha, cap if cap.is_file() else None, d.name, fg is not None,
                                      root.name if rel == "." else rel))
                seen.add(colour)
        # parallel layout: d/alpha/<stem>.* with d/fg or d/image
        alpha_dir = d / "alpha"
        if alpha_dir.is_dir():
            colour_dirs = [(d / n, True) for n in FG_NAMES] + [(d / n, False) for n in IMAGE_NAMES]
            for a in sorted(alpha_dir.iterdir()):
                if a.suffix.lower() not in IMAGE_EXTS:
                    continue
                for cdir, is_fg in colour_dirs:
                    c = next((cdir / f"{a.stem}{e}" for e in IMAGE_EXTS if (cdir / f"{a.stem}{e}").is_file()), None)
                    if c is not None and c not in seen:
                        caps = [d / "caption" / f"{a.stem}.txt", c.with_suffix(".txt")]
                        cap = next((p for p in caps if p.is_file()), None)
                        rel = d.relative_to(root).as_posix()
                        samples.append(Sample(c, a, cap, d.name, is_fg, a.stem if rel == "." else f"{rel}/{a.stem}"))
                        seen.add(c)
                        break
    if not samples:
        raise ValueError(
            f"data: no (fg|image, alpha) pairs found under {root} (expected <name>/image.png + <name>/alpha.png, "
            "or fg/ (or image/) and alpha/ folders with matching file names)"
        )
    samples.sort(key=lambda s: str(s.colour))
    return samples


def read_caption(sample: Sample, default: str) -> str:
    """The sample's sidecar caption (first non-empty line), else its cleaned folder name, else ``default``."""
    if sample.caption_file is not None:
        try:
            for line in sample.caption_file.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip():
                    return line.strip()
        except OSError:
            pass
    return clean_folder_caption(sample.folder_caption) or default


def load_pair(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """sample -> (colour [3,H,W], alpha [1,H,W]) float32 in [0,1]; ValueError for unreadable/mismatched/empty."""
    from ..common.images import load_image

    col = load_image(sample.colour)
    al = load_image(sample.alpha)
    # a matte is normally grey; an RGBA/grey+alpha matte file carries it in its alpha channel when that is not flat
    if al.alpha is not None and float(al.alpha.min()) < 1.0:
        alpha = al.alpha
    else:
        alpha = al.rgb.mean(0, keepdim=True)
    rgb = col.rgb
    if rgb.shape[1:] != alpha.shape[1:]:
        raise ValueError(f"{sample.alpha}: size {tuple(alpha.shape[1:])} does not match {sample.colour} {tuple(rgb.shape[1:])}")
    if not (alpha > 0.01).any():
        raise ValueError(f"{sample.alpha}: alpha is empty (no foreground)")
    return rgb, alpha


@dataclass
class Pair:
    """A loaded subject: ``fg`` [3,H,W] straight colour in [0,1] (or the photo when no fg file exists), ``alpha``
    [1,H,W] in [0,1] (1 = opaque)."""

    name: str
    fg: torch.Tensor
    alpha: torch.Tensor


def load_pairs(folder: str | os.PathLike, names: list[str] | None = None) -> list[Pair]:
    """folder (either layout) -> [Pair] sorted by path; ``names`` keeps only those subjects. ValueError naming the
    folder when it holds no pairs, the subject when a name is missing, the file when one is unreadable, of
    mismatched size or has an empty alpha."""
    samples = scan_folder(folder)
    if names is not None:
        missing = sorted(set(names) - {s.name for s in samples})
        if missing:
            raise ValueError(f"data: subjects {missing} not found in {folder}")
        samples = [s for s in samples if s.name in names]
    pairs = []
    for s in samples:
        try:
            rgb, alpha = load_pair(s)
        except (OSError, ValueError) as exc:
            raise ValueError(f"data: subject {s.name!r}: {exc}") from None
        pairs.append(Pair(s.name, rgb, alpha))
    return pairs
