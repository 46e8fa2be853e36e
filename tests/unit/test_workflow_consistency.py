"""The shipped workflows (workflows/api/*.json, read as files: no ComfyUI) key one canvas against one colour and decode
with one VAE.

- Key colour: every key-consuming node (MattingHeadDecode, GreenPost, SaveMattingDataset) downstream of a
  GreenControl / GreenControlSampler gets its key over the ``key`` socket from that very node (directly or through
  the ``key`` output of another key consumer, which passes on the colours it keyed with); a linked consumer's own
  widget says "auto" or the same colour. Without a GreenControl (keying a loaded picture) the consumers of one
  workflow agree: all linked to one source, or one widget value.
- VAE: every VAE input of a workflow comes from one output, and when that is a checkpoint loader's VAE it is the
  checkpoint the sampled MODEL came from.

The key-output slots named here are checked against the real node definitions in
tests/integration/test_workflows.py (test_key_output_slots_match_the_nodes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffumatting.common.keycolour import AUTO, parse_key_colour

API_DIR = Path(__file__).resolve().parents[2] / "workflows" / "api"
NAMES = sorted(p.stem for p in API_DIR.glob("*.json"))

# node type -> the slot of its DIFFUMATTING_KEY_COLOUR output
KEY_OUTPUT_SLOT = {
    "DiffuMattingGreenControl": 3,
    "DiffuMattingGreenControlSampler": 2,
    "DiffuMattingKeyColour": 0,
    "DiffuMattingMattingHeadDecode": 4,
    "DiffuMattingGreenPost": 5,
    "DiffuMattingObjectOnCanvas": 1,  # the canvas colour it put the object on
}
PAINTERS = {"DiffuMattingGreenControl", "DiffuMattingGreenControlSampler"}
CONSUMERS = {"DiffuMattingMattingHeadDecode", "DiffuMattingGreenPost", "DiffuMattingSaveMattingDataset"}
CHECKPOINT_LOADERS = {"CheckpointLoaderSimple", "CheckpointLoader", "ImageOnlyCheckpointLoader"}


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _upstream(prompt: dict, nid: str) -> set[str]:
    """Every node ``nid`` depends on through any link (not itself)."""
    seen, todo = set(), [nid]
    while todo:
        for value in prompt[todo.pop()]["inputs"].values():
            if _is_link(value) and value[0] not in seen:
                seen.add(value[0])
                todo.append(value[0])
    return seen


def key_root(prompt: dict, nid: str, name: str = "") -> tuple[str | None, list[str]]:
    """Follow ``nid``'s ``key`` link (through key consumers that pass their key on) -> (the node the colour comes
    from, or None when ``nid``'s key is not linked; the problems found on the way)."""
    problems, chain = [], [nid]
    link = prompt[nid]["inputs"].get("key")
    if link is None:
        return None, problems
    while True:
        if not _is_link(link) or link[0] not in prompt:
            problems.append(f"{name}: node {chain[-1]}: 'key' is {link!r}, not a link to a node of the workflow")
            return None, problems
        src, slot = link
        kind = prompt[src]["class_type"]
        if KEY_OUTPUT_SLOT.get(kind) != slot:
            problems.append(f"{name}: node {chain[-1]}: 'key' comes from {kind} (node {src}) output {slot}, which "
                            "is not a key-colour output")
            return None, problems
        if src in chain:
            problems.append(f"{name}: a cycle of key links through {chain}")
            return None, problems
        chain.append(src)
        upstream_key = prompt[src]["inputs"].get("key")
        if kind in CONSUMERS and upstream_key is not None:
            link = upstream_key  # it passes on the colour it was given
            continue
        return src, problems  # a GreenControl (the colour it painted, its own key input included) or a KeyColour


def _widget_colour(node: dict):
    """The colour a node's own key_colour widget names -> its hex, "auto", or None when there is no widget value."""
    value = node["inputs"].get("key_colour")
    if value is None or _is_link(value):
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if value == "custom hex":
        value = node["inputs"].get("key_hex")
    return parse_key_colour(value).hex


def key_problems(prompt: dict, name: str) -> list[str]:
    problems = []
    painters = {nid for nid, n in prompt.items() if n["class_type"] in PAINTERS}
    consumers = sorted(nid for nid, n in prompt.items() if n["class_type"] in CONSUMERS)
    roots = {}
    for nid in consumers:
        root, found = key_root(prompt, nid, name)
        problems += found
        roots[nid] = root
        kind = prompt[nid]["class_type"]
        above = painters & _upstream(prompt, nid)
        if above:
            if root not in above:
                problems.append(f"{name}: {kind} (node {nid}) is downstream of GreenControl node(s) "
                                f"{sorted(above)} but its 'key' is {'not linked' if root is None else f'from node {root}'}")
                continue
            own, painted = _widget_colour(prompt[nid]), _widget_colour(prompt[root])
            if own not in (None, AUTO) and painted not in (None, AUTO) and own != painted:
                problems.append(f"{name}: {kind} (node {nid}) shows key_colour {prompt[nid]['inputs']['key_colour']!r} "
                                f"while its key comes from node {root}, painted {painted} (the widget contradicts "
                                "the colour it keys with)")
    free = [nid for nid in consumers if not (painters & _upstream(prompt, nid))]
    source = {nid: roots[nid] or nid for nid in free}  # where each gets its colour: a node's key output, or its widget
    distinct = set(source.values())
    widget_only = all(roots.get(s) is None and s in free for s in distinct)
    colours = {_widget_colour(prompt[s]) for s in distinct} if widget_only else set()
    if len(distinct) > 1 and not (widget_only and len(colours) == 1):
        problems.append(f"{name}: the key consumers {free} key against different colours: "
                        + ", ".join(f"node {nid} from {'its widget ' + repr(_widget_colour(prompt[s])) if s == nid else 'node ' + s}"
                                    for nid, s in sorted(source.items())))
    return problems


def _model_checkpoints(prompt: dict, link) -> set[str]:
    """The checkpoint loader node(s) a MODEL link comes from (following 'model' inputs upstream)."""
    out, todo, seen = set(), [link], set()
    while todo:
        src, _ = todo.pop()
        if src in seen:
            continue
        seen.add(src)
        node = prompt[src]
        if node["class_type"] in CHECKPOINT_LOADERS:
            out.add(src)
        elif _is_link(node["inputs"].get("model")):
            todo.append(node["inputs"]["model"])
    return out


def vae_problems(prompt: dict, name: str) -> list[str]:
    problems = []
    sources = {tuple(n["inputs"]["vae"]) for n in prompt.values() if _is_link(n["inputs"].get("vae"))}
    if len(sources) > 1:
        problems.append(f"{name}: VAE inputs come from {len(sources)} different outputs {sorted(sources)}; one "
                        "canvas is encoded, anchored and decoded with one VAE")
    checkpoints = set()
    for n in prompt.values():
        if _is_link(n["inputs"].get("model")):
            checkpoints |= _model_checkpoints(prompt, n["inputs"]["model"])
    for src, slot in sources:
        kind = prompt[src]["class_type"]
        if kind in CHECKPOINT_LOADERS:
            if slot != 2:
                problems.append(f"{name}: a VAE input takes {kind} (node {src}) output {slot}, not its VAE (2)")
            if checkpoints and src not in checkpoints:
                problems.append(f"{name}: the VAE is checkpoint node {src}'s but the MODEL comes from "
                                f"{sorted(checkpoints)}")
        elif kind != "VAELoader":
            problems.append(f"{name}: the VAE comes from {kind} (node {src}), neither a checkpoint loader nor a "
                            "VAELoader")
    return problems


def _load(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def test_there_are_workflows_to_check():
    assert len(NAMES) >= 9
    assert any(n["class_type"] in PAINTERS for name in NAMES for n in _load(name).values())


@pytest.mark.parametrize("name", NAMES)
def test_one_canvas_one_key_colour(name):
    assert key_problems(_load(name), name) == []


@pytest.mark.parametrize("name", NAMES)
def test_one_vae_along_the_workflow(name):
    assert vae_problems(_load(name), name) == []


# ------------------------------------------------------------------------------------------------------------------
# the checks themselves catch what they are for (workflow 02 as it shipped before the key socket)


def _wf02_before() -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5.safetensors"}},
        "2": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": "head.safetensors"}},
        "3": {"class_type": "DiffuMattingGreenControlSampler",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "key_colour": "green"}},
        "4": {"class_type": "DiffuMattingMattingHeadDecode",
              "inputs": {"samples": ["3", 0], "vae": ["1", 2], "head": ["2", 0], "key_colour": "pure_green"}},
        "5": {"class_type": "DiffuMattingGreenPost",
              "inputs": {"image": ["4", 0], "alpha": ["4", 1], "key_colour": "auto", "key_hex": "#00B140"}},
    }


def test_the_key_check_catches_three_colours_on_one_canvas():
    old = _wf02_before()
    problems = key_problems(old, "02-before")
    assert len(problems) == 2 and all("not linked" in p for p in problems)
    wired = json.loads(json.dumps(old))
    wired["4"]["inputs"]["key"] = ["3", 2]
    wired["5"]["inputs"]["key"] = ["4", 4]
    problems = key_problems(wired, "02-wired")
    assert len(problems) == 1 and "contradicts" in problems[0]  # the decode widget still shows pure green
    wired["4"]["inputs"]["key_colour"] = "chroma green #00B140"
    assert key_problems(wired, "02-wired") == []
    wired["5"]["inputs"]["key"] = ["4", 1]  # the alpha output is not a key
    assert any("not a key-colour output" in p for p in key_problems(wired, "02-bad-slot"))


def test_the_key_check_catches_disagreeing_widgets_without_a_painter():
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "DiffuMattingGreenPost", "inputs": {"image": ["1", 0], "key_colour": "auto"}},
        "3": {"class_type": "DiffuMattingSaveMattingDataset",
              "inputs": {"image": ["1", 0], "fg": ["2", 0], "alpha": ["2", 1], "key_colour": "pure_green"}},
    }
    assert any("different colours" in p for p in key_problems(prompt, "x"))
    prompt["3"]["inputs"]["key"] = ["2", 5]
    assert key_problems(prompt, "x") == []


def test_the_vae_check_catches_a_foreign_vae():
    old = _wf02_before()
    assert vae_problems(old, "02") == []
    old["6"] = {"class_type": "VAELoader", "inputs": {"vae_name": "other.safetensors"}}
    old["4"]["inputs"]["vae"] = ["6", 0]
    assert any("different outputs" in p for p in vae_problems(old, "02"))
    old["3"]["inputs"]["vae"] = ["6", 0]
    assert vae_problems(old, "02") == []  # an explicit VAELoader used consistently
    old["7"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}}
    old["3"]["inputs"]["vae"] = old["4"]["inputs"]["vae"] = ["7", 2]
    assert any("MODEL comes from" in p for p in vae_problems(old, "02"))
