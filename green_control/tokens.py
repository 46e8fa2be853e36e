"""Token positions of the key-colour word ("green") in a tokenized prompt, without ComfyUI.

Works on the token lists CLIP tokenizers produce (ComfyUI's ``clip.tokenize(text)["l"]``: a list of 77-token
chunks of ``(id, weight)`` pairs, or plain ids) and the tokenizer's inverse vocabulary ``{id: "green</w>"}``.
The conditioning concatenates the chunks along the context axis, so a token at position ``p`` of chunk ``c``
has global position ``sum(len(chunk) for chunk before c) + p`` (``77 * c + p`` for CLIP).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["KEY_WORDS", "key_word_for", "token_matches", "find_word_positions", "flatten_ids"]

# Colour words a key colour preset is prompted with (see common/colour.py KEY_PRESETS).
KEY_WORDS = {"green": "green", "pure_green": "green", "blue": "blue", "pure_blue": "blue", "magenta": "magenta"}

_END = "</w>"


def key_word_for(rgb: Sequence[float]) -> str:
    """rgb: [3] in [0,1] -> the colour word ("green", "blue" or "magenta") whose hue is nearest."""
    import colorsys

    h, _, _ = colorsys.rgb_to_hsv(*(float(v) for v in rgb))
    hue = h * 360.0
    refs = {"green": 120.0, "blue": 225.0, "magenta": 300.0}

    def dist(a: float) -> float:
        d = abs(hue - a) % 360.0
        return min(d, 360.0 - d)

    return min(refs, key=lambda k: dist(refs[k]))


def token_matches(token: str, word: str) -> bool:
    """True if a vocabulary entry spells ``word`` (``"green</w>"``, ``"green"`` as a word start, plural "greens")."""
    t = token.lower()
    core = t[: -len(_END)] if t.endswith(_END) else t
    w = word.lower()
    return core == w or core == w + "s"


def flatten_ids(chunks: Sequence[Sequence]) -> list[int | None]:
    """chunks of ``(id, weight[, word])`` tuples or ids -> one flat list; embedding vectors become ``None``."""
    flat: list[int | None] = []
    for chunk in chunks:
        for item in chunk:
            tok = item[0] if isinstance(item, (tuple, list)) else item
            flat.append(int(tok) if isinstance(tok, int) or (hasattr(tok, "ndim") and tok.ndim == 0) else None)
    return flat


def find_word_positions(
    chunks: Sequence[Sequence], inv_vocab: Mapping[int, str], word: str, last: int | None = None
) -> list[int]:
    """chunks: token chunks of one prompt -> global positions (ascending) of the tokens that spell ``word``.

    ``last`` keeps only the last ``last`` occurrences (e.g. those of the template suffix, not a "green apple" in
    the subject). Raises ``ValueError`` naming the word when it does not occur.
    """
    if not word or not word.strip():
        raise ValueError("word: expected a non-empty colour word such as 'green'")
    word = word.strip()
    positions = [
        i for i, tok in enumerate(flatten_ids(chunks)) if tok is not None and token_matches(inv_vocab.get(tok, ""), word)
    ]
    if not positions:
        raise ValueError(f"prompt: the key-colour word {word!r} does not occur in the prompt; add it to the suffix")
    if last is not None and last > 0:
        positions = positions[-last:]
    return positions
