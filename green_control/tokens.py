"""Token positions of the key-colour word ("green") in a tokenized prompt, without ComfyUI.

Works on the token lists CLIP tokenizers produce (ComfyUI's ``clip.tokenize(text)["l"]``: a list of 77-token
chunks of ``(id, weight)`` pairs, or plain ids) and the tokenizer's inverse vocabulary ``{id: "green</w>"}``.
The conditioning concatenates the chunks along the context axis, so a token at position ``p`` of chunk ``c``
has global position ``sum(len(chunk) for chunk before c) + p`` (``77 * c + p`` for CLIP).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["token_matches", "find_word_positions", "flatten_ids", "count_word", "suffix_word_positions",
           "clip_inverse_vocab"]

# The word a key colour is prompted with is its KeyColour.word (common/keycolour.py).

_END = "</w>"


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


def count_word(chunks: Sequence[Sequence], inv_vocab: Mapping[int, str], word: str) -> int:
    """chunks: token chunks of a text -> how many of its tokens spell ``word`` (see :func:`token_matches`)."""
    return sum(1 for tok in flatten_ids(chunks) if tok is not None and token_matches(inv_vocab.get(tok, ""), word))


def suffix_word_positions(
    prompt_chunks: Sequence[Sequence], suffix_chunks: Sequence[Sequence], inv_vocab: Mapping[int, str], word: str
) -> list[int]:
    """prompt_chunks: tokens of ``"<subject>, <suffix>"``, suffix_chunks: tokens of the suffix alone -> the global
    positions of ``word`` in the prompt that belong to the suffix (its last occurrences).

    Only the suffix names the canvas: a "green" in the subject ("a green apple") is never used. Raises
    ``ValueError`` naming ``suffix`` when the suffix (also an empty one) does not contain the word.
    """
    if not word or not word.strip():
        raise ValueError("word: expected a non-empty colour word such as 'green'")
    word = word.strip()
    in_suffix = count_word(suffix_chunks, inv_vocab, word)
    if in_suffix == 0:
        raise ValueError(f"suffix: it does not contain the key colour's word {word!r}, which names the canvas and "
                         f"whose attention gives the background mask (a {word!r} in the subject is not used); "
                         f"put it in the suffix, e.g. 'isolated on a plain {word} screen background'")
    positions = find_word_positions(prompt_chunks, inv_vocab, word)
    if len(positions) < in_suffix:  # cannot happen with a prompt that ends with the suffix
        raise ValueError(f"suffix: the prompt has {len(positions)} {word!r} tokens but the suffix {in_suffix}")
    return positions[-in_suffix:]


def clip_inverse_vocab(tokenizer, key: str = "l") -> Mapping[int, str]:
    """A ComfyUI CLIP tokenizer object (SD1.x ``clip_l``, SDXL ``clip_l``/``clip_g``) -> its ``{id: token}`` vocabulary.

    Duck-typed (attribute access only, no ComfyUI import). ``ValueError`` naming ``clip`` when there is none."""
    for name in (f"clip_{key}", getattr(tokenizer, "clip", None), key):
        inner = getattr(tokenizer, name, None) if isinstance(name, str) and name else None
        if inner is not None and hasattr(inner, "inv_vocab"):
            return inner.inv_vocab
    raise ValueError(f"clip: its tokenizer ({type(tokenizer).__name__}) has no CLIP vocabulary for {key!r}; "
                     "GreenControl supports SD1.x and SDXL text encoders")
