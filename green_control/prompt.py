"""The green-canvas prompt: the one default suffix, the negative suffix and the prompt builder.

The prompt is ``"<subject>, <suffix>"``; the suffix's colour word ("green", the template's word) is replaced by the
key colour's word (``KeyColour.word``: "blue", "magenta", ...), and that word's cross-attention is the background
mask. Used by the GreenControl nodes, the training data (captions) and ``python -m diffumatting train``.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_SUFFIX", "DEFAULT_NEGATIVE_SUFFIX", "TEMPLATE_WORD", "key_suffix", "build_prompt",
           "build_negative", "names_word", "GREENISH_WORDS", "MAGENTA_WORDS", "BLUE_WORDS", "KEY_FAMILIES",
           "named_words", "choose_subject_key"]

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


# ------------------------------------------------------------------------------------------------ auto key colour
# "auto" key colour of GreenControl(Sampler): a canvas colour the subject does not name. The subject is read for
# whole words (a plural "s" counts, see names_word) of three families: the green-ish things and colours below (a
# green subject on a green canvas is keyed away), and the blue-ish and magenta-ish colour words, which include the
# colour words of the key presets ("green", "blue", "magenta"). The first family the subject does not name gives
# the key, in the order green -> magenta (the hue opposite green) -> blue; a subject naming all three gets the family
# it names least.
GREENISH_WORDS = (
    # colours
    "green", "lime", "olive", "emerald", "jade", "mint", "chartreuse", "teal", "viridian", "sage", "khaki",
    "pistachio", "verdant",
    # plants and food
    "leaf", "leaves", "leafy", "foliage", "grass", "grassy", "lawn", "moss", "mossy", "fern", "ivy", "vine", "tree",
    "bush", "shrub", "hedge", "plant", "succulent", "cactus", "cacti", "bamboo", "clover", "shamrock", "lettuce",
    "cabbage", "spinach", "kale", "broccoli", "cucumber", "zucchini", "courgette", "pickle", "pea", "avocado", "kiwi",
    "celery", "asparagus", "herb", "basil", "parsley", "matcha", "salad", "seaweed", "algae",
    # animals and things
    "frog", "toad", "lizard", "gecko", "iguana", "chameleon", "turtle", "crocodile", "alligator", "parrot",
    "mantis", "caterpillar", "grasshopper", "dinosaur", "dragon", "goblin", "orc", "alien", "slime", "emeralds",
)
MAGENTA_WORDS = ("magenta", "pink", "fuchsia", "purple", "violet", "lilac", "lavender", "mauve", "orchid", "plum",
                 "rose", "flamingo")
BLUE_WORDS = ("blue", "navy", "azure", "cobalt", "sapphire", "cyan", "turquoise", "aqua", "indigo", "cerulean",
              "denim", "ocean", "sea", "sky", "water", "ice")
# family -> (the key preset it would paint, its words)
KEY_FAMILIES = (("chroma_green", GREENISH_WORDS), ("magenta", MAGENTA_WORDS), ("chroma_blue", BLUE_WORDS))


def named_words(text: str | None, words) -> list[str]:
    """text, words -> the words ``text`` names as whole words (case-insensitive, plural counts), in list order."""
    return [w for w in words if names_word(text or "", w)]


def choose_subject_key(subject: str | None) -> tuple[str, str]:
    """subject text -> (key preset id, a one-line reason): the first of chroma green, magenta, chroma blue whose
    colour family (GREENISH_WORDS, MAGENTA_WORDS, BLUE_WORDS) the subject does not name."""
    if subject is not None and not isinstance(subject, str):
        raise ValueError(f"subject: expected text, got {type(subject).__name__}")
    named = [(preset, named_words(subject, words)) for preset, words in KEY_FAMILIES]
    free = [preset for preset, hits in named if not hits]
    if free:
        preset = free[0]
    else:
        preset = min(named, key=lambda item: len(item[1]))[0]
    hits = {p: h for p, h in named if h}
    if not hits:
        return preset, "the subject names no green, blue or magenta thing"
    said = "; ".join(f"{', '.join(repr(w) for w in h[:3])}" for h in hits.values())
    avoided = ", ".join(p.replace("chroma_", "") for p in hits)
    if free:
        return preset, f"the subject names {said} (avoided {avoided})"
    return preset, f"the subject names {said}: every key colour is named, {preset} the least"
