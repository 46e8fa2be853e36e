"""Cross-validation helpers shared by the benchmarks: which trained file may key which subject, and subject categories.

A file trained with ``train-head --fold I/K`` records the real subjects it trained on in its metadata
(``training.subjects``); each subject is evaluated with the first given file that did not see it, so a set of K fold
files evaluates every development subject held out, and a shipped file evaluates any folder of mattes it never saw.
"""

from __future__ import annotations

import re
from pathlib import Path


class HeldOutModels:
    """Head files -> for each subject the first whose training subjects do not include it.

    ``image_only``: True for keyer files (train-head --image-only), False for decoder heads; a file of the other kind
    is refused (SystemExit naming ``flag`` and the file)."""

    def __init__(self, paths: list[str], flag: str, image_only: bool):
        from diffumatting.matting_head.weights import load_head

        self.flag = flag
        self.models = []
        for p in paths:
            head, info = load_head(p)  # each file read once
            if head.image_only != image_only:
                kind = "an image-only keyer" if head.image_only else "a decoder matting head"
                raise SystemExit(f"{flag}: {p} is {kind}, not what {flag} takes")
            self.models.append((head, info, set((info.get("training") or {}).get("subjects") or [])))

    def for_subject(self, name: str):
        """-> (head, info) of the first file that did not train on ``name``."""
        for head, info, seen in self.models:
            if name not in seen:
                return head, info
        raise SystemExit(f"{self.flag}: every file was trained on {name}; give one that held it out "
                         "(train-head --fold I/K)")


def subject_categories(data_dir: Path) -> dict[str, str]:
    """The mattes folder's SOURCES*.md tables -> {subject folder: category} (hair, fur, transparent, portrait, ...; the first
    of several).

    Reads a table's ``category`` column, or a ``content (category)`` column's last parenthesised word; subjects the
    tables do not list are absent (callers show them as "other")."""
    out: dict[str, str] = {}
    for md in sorted(Path(data_dir).glob("SOURCES*.md")):
        column = None
        for line in md.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("|"):
                column = None if not line.strip() else column
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0] == "folder":
                names = [c.lower() for c in cells]
                column = next((i for i, c in enumerate(names) if c == "category" or "(category)" in c), None)
                continue
            if column is None or len(cells) <= column or set(cells[0]) <= set("-: "):
                continue
            text = cells[column]
            if "(" in text:  # "red dragon plush with hair tuft (fur/hair)" -> "fur/hair"
                found = re.findall(r"\(([^()]*)\)", text)
                text = found[-1] if found else text
            # the first of several ("fur/hair" -> fur, "thin structures, partly ..." -> thin structures)
            out[cells[0].strip("`")] = re.split(r"[/,]", text)[0].strip().lower()
    return out
