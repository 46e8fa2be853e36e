"""green_control.prompt and the suffix's token positions: one suffix, one prompt builder, the colour word (#19 N9)."""

from __future__ import annotations

import pytest

from diffumatting.green_control.prompt import (
    DEFAULT_NEGATIVE_SUFFIX,
    DEFAULT_SUFFIX,
    build_negative,
    build_prompt,
    key_suffix,
    names_word,
)
from diffumatting.green_control.tokens import count_word, suffix_word_positions

# A tiny CLIP-like vocabulary (ComfyUI's SD1 tokenizer ids for these words).
VOCAB = {49406: "<|startoftext|>", 49407: "<|endoftext|>", 320: "a</w>", 736: "red</w>", 3055: "apple</w>",
         525: "on</w>", 1901: "green</w>", 3750: "screen</w>", 5994: "background</w>", 267: ",</w>",
         1746: "blue</w>", 4960: "plain</w>", 2772: "studio</w>"}
IDS = {v[:-4]: k for k, v in VOCAB.items() if v.endswith("</w>")}


def _chunks(words):
    ids = [IDS[w] for w in words]
    chunk = [(49406, 1.0)] + [(i, 1.0) for i in ids] + [(49407, 1.0)]
    return [chunk + [(49407, 1.0)] * (77 - len(chunk))]


def test_default_suffix_is_chroma_green_not_pure():
    assert DEFAULT_SUFFIX == "isolated on a plain green screen background"
    assert "pure" not in DEFAULT_SUFFIX and names_word(DEFAULT_SUFFIX, "green")
    assert DEFAULT_NEGATIVE_SUFFIX == "shadow, floor, reflection, gradient background"


def test_build_prompt_template_and_key_word():
    assert build_prompt("a red apple", DEFAULT_SUFFIX) == "a red apple, isolated on a plain green screen background"
    assert build_prompt("a red apple", DEFAULT_SUFFIX, "green") == build_prompt("a red apple", DEFAULT_SUFFIX)
    # the suffix's "green" becomes the key's word; the subject's is left alone
    assert build_prompt("a green frog", DEFAULT_SUFFIX, "blue") == \
        "a green frog, isolated on a plain blue screen background"
    assert key_suffix("on a GREEN screen, greenery", "magenta") == "on a magenta screen, greenery"
    # empty parts and a trailing comma
    assert build_prompt("", " on green ") == "on green"
    assert build_prompt("a cup,", "") == "a cup"
    assert build_prompt(None, None) == ""
    assert build_negative("blurry", DEFAULT_NEGATIVE_SUFFIX) == "blurry, " + DEFAULT_NEGATIVE_SUFFIX
    assert build_negative("", "") == "" and build_negative("x,", None) == "x"


@pytest.mark.parametrize("call, name", [(lambda: build_prompt(3, "s"), "subject"),
                                        (lambda: key_suffix(["green"], "blue"), "suffix"),
                                        (lambda: build_negative("n", 1.0), "negative_suffix")])
def test_bad_prompt_parts_name_the_input(call, name):
    with pytest.raises(ValueError, match=f"^{name}: expected text"):
        call()


def test_only_the_suffix_word_counts():
    suffix = ["on", "a", "green", "screen"]
    prompt = ["a", "green", "apple", ","] + suffix
    # BOS at 0: the subject's green at 2, the suffix's at 7
    assert suffix_word_positions(_chunks(prompt), _chunks(suffix), VOCAB, "green") == [7]
    assert count_word(_chunks(prompt), VOCAB, "green") == 2
    # a suffix naming the word twice keeps both of its occurrences
    two = ["green", "on", "green"]
    assert suffix_word_positions(_chunks(["a", "green", "apple", ","] + two), _chunks(two), VOCAB, "green") == [5, 7]


@pytest.mark.parametrize("suffix", [["on", "a", "plain", "studio", "background"], []])
def test_suffix_without_the_word_is_an_error_even_if_the_subject_has_it(suffix):
    """#19 N9: subject "a green apple" + a suffix without "green" (or an empty suffix) is refused, naming suffix."""
    prompt = ["a", "green", "apple", ","] + suffix
    suffix_chunks = _chunks(suffix) if suffix else []
    with pytest.raises(ValueError, match=r"^suffix: it does not contain the key colour's word 'green'"):
        suffix_word_positions(_chunks(prompt), suffix_chunks, VOCAB, "green")


def test_suffix_word_positions_needs_a_word():
    with pytest.raises(ValueError, match="word"):
        suffix_word_positions(_chunks(["a"]), _chunks(["a"]), VOCAB, "  ")
