"""The green-canvas prompt: the one default suffix, the negative suffix and the prompt builder.

The prompt is ``"<subject>, <suffix>"``; the suffix's colour word ("green", the template's word) is replaced by the
key colour's word (``KeyColour.word``: "blue", "magenta", ...), and that word's cross-attention is the background
mask. Used by the GreenControl nodes, the training data (captions) and ``python -m diffumatting train``.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_SUFFIX", "DEFAULT_NEGATIVE_SUFFIX", "TEMPLATE_WORD", "key_suffix", "build_prompt",
           "build_negative", "names_word"]

# The default key colour is chroma green (#00B140), not the pure primary: the suffix says "plain", not "pure".
DEFAULT_SUFFIX = "isolated on a plain green screen background"
DEFAULT_NEGATIVE_SUFFIX = "shadow, floor, reflection, gradient background"
TEMPLATE_WORD = "green"  # the colour word a suffix is written with; replaced by the key colour's word


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def key_suffix(suffix: str | None, word: str | None = None) -> str:
    """suffix, the key's colour word -> the suffix with every whole-word "green" replaced by ``word`` (stripped).

    ``word=None`` (or "green") leaves the suffix as it is. Other colour words in the suffix are not touched.
    """
    if suffix is not None and not isinstance(suffix, str):
        raise ValueError(f"suffix: expected text, got {type(suffix).__name__}")
    text = (suffix or "").strip()
    if word and word.strip().lower() != TEMPLATE_WORD:
        text = re.sub(rf"\b{TEMPLATE_WORD}\b", word.strip(), text, flags=re.IGNORECASE)
    return text


def build_prompt(subject: str | None, suffix: str | None, word: str | None = None) -> str:
    """subject, suffix[, key word] -> ``"<subject>, <suffix>"`` with the suffix's "green" replaced by ``word``;
    either part may be empty (a trailing comma of the subject is dropped)."""
    if subject is not None and not isinstance(subject, str):
        raise ValueError(f"subject: expected text, got {type(subject).__name__}")
    return _join((subject or "").strip().rstrip(",").strip(), key_suffix(suffix, word))


def build_negative(negative: str | None, negative_suffix: str | None = DEFAULT_NEGATIVE_SUFFIX) -> str:
    """negative prompt, negative suffix -> ``"<negative>, <negative suffix>"`` (either part may be empty)."""
    for name, value in (("negative", negative), ("negative_suffix", negative_suffix)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name}: expected text, got {type(value).__name__}")
    return _join((negative or "").strip().rstrip(",").strip(), (negative_suffix or "").strip())


def names_word(text: str, word: str) -> bool:
    """True if ``text`` contains ``word`` as a whole word (case-insensitive; a plural "greens" counts)."""
    return re.search(rf"\b{re.escape(word)}s?\b", text or "", flags=re.IGNORECASE) is not None
