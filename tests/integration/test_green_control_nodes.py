"""GreenControl / GreenControlSampler in a real ComfyUI: samplers, LoRA, ControlNet, patch stacking, tokens, maps."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch


# ----------------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def gc(comfy):
    """The pack's nodes/green_control module as ComfyUI loaded it."""
    return sys.modules[comfy.pack.__name__ + ".nodes.green_control"]


@pytest.fixture(scope="module")
def spy_nodes(comfy):
    """Test-only nodes that add another node's attention patches: a composable attn2_patch and an exclusive
    attn2 replace on every cross-attention block (the way IPAdapter-style nodes do)."""
    calls = {"patch": 0, "replace": 0}

    def other_patch(n, context, value, extra_options):
        calls["patch"] += 1
        return n, context, value

    def other_replace(q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention

        calls["replace"] += 1
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    class DMTestOtherAttn2:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": ("MODEL",), "replace": ("BOOLEAN", {"default": False})}}

        RETURN_TYPES = ("MODEL",)
        FUNCTION = "patch"
        CATEGORY = "testing"

        def patch(self, model, replace):
            m = model.clone()
            m.set_model_attn2_patch(other_patch)
            if replace:
                dm = m.model.diffusion_model
                for kind, blocks in (("input", dm.input_blocks), ("output", dm.output_blocks)):
                    for i, blk in enumerate(blocks):
                        for layer in blk:
                            for j, _ in enumerate(getattr(layer, "transformer_blocks", [])):
                                m.set_model_attn2_replace(other_replace, kind, i, j)
                for layer in dm.middle_block:
                    for j, _ in enumerate(getattr(layer, "transformer_blocks", [])):
                        m.set_model_attn2_replace(other_replace, "middle", 0, j)
            return (m,)

    comfy.node_classes["DMTestOtherAttn2"] = DMTestOtherAttn2
    return calls


@pytest.fixture(scope="module")
def green_runs(comfy, gc):
    """Test-only node DMTestGreenRuns(model, tag) -> (MODEL, RUNS): a clone of the model with its own RunLog, the
    way GreenControlSampler watches its own runs; every finished sampling run of that clone lands in the log.
    ``observe()`` gives each use a new ``tag``, so the node and the sampler after it run again in every prompt (a
    fresh log each time) while the GreenControl node before it stays cached."""

    class DMTestGreenRuns:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": "obs"})}}

        RETURN_TYPES = ("MODEL", "DM_GREEN_RUNS")
        FUNCTION = "observe"
        CATEGORY = "testing"

        def observe(self, model, tag):
            m = model.clone()
            return (m, gc.attach_run_log(m))

    comfy.node_classes["DMTestGreenRuns"] = DMTestGreenRuns
    return DMTestGreenRuns


_TAGS = itertools.count()


def observe(model, name="obs"):
    return {name: {"class_type": "DMTestGreenRuns", "inputs": {"model": list(model), "tag": f"{name}{next(_TAGS)}"}}}


@pytest.fixture(scope="module")
def tiny_lora(comfy, tiny_sd15):
    """A LoRA file for the tiny SD1.5 model (kohya key names, built from ComfyUI's own key map)."""
    import safetensors.torch
    from comfy import lora as comfy_lora

    key_map = comfy_lora.model_lora_keys_unet(tiny_sd15.model.model, {})
    sd = tiny_sd15.model.model.state_dict()
    tensors = {}
    gen = torch.Generator().manual_seed(4)
    for lora_key, weight_key in key_map.items():
        if not isinstance(lora_key, str) or not lora_key.startswith("lora_unet_") or "attn2_to_q" not in lora_key:
            continue
        weight = sd[weight_key]
        out_f, in_f = weight.shape[0], weight.shape[1]
        tensors[f"{lora_key}.lora_up.weight"] = torch.randn(out_f, 2, generator=gen) * 0.5
        tensors[f"{lora_key}.lora_down.weight"] = torch.randn(2, in_f, generator=gen) * 0.5
        tensors[f"{lora_key}.alpha"] = torch.tensor(2.0)
    assert tensors, "no attn2 to_q keys found for the tiny LoRA"
    name = "tiny_sd15_attn2.safetensors"
    safetensors.torch.save_file(tensors, str(comfy.models_dir / "loras" / name))
    return name


def green_control(family="sd15", subject="a red apple", strength=0.8, end=0.7, **extra):
    """API-prompt nodes: tiny models -> GreenControl."""
    inputs = {"model": ["m", 0], "clip": ["m", 1], "vae": ["m", 2], "subject": subject, "negative": "",
              "key_colour": "green", "strength": strength, "schedule_end": end}
    inputs.update(extra)
    return {
        "m": {"class_type": "DMTestTinyModels", "inputs": {"family": family}},
        "gc": {"class_type": "DiffuMattingGreenControl", "inputs": inputs},
    }


def ksampler(model, positive=("gc", 1), negative=("gc", 2), steps=3, cfg=5.0, size=64, batch=1, seed=1, name="ks"):
    lat = "lat" if name == "ks" else f"lat_{name}"
    return {
        lat: {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        name: {"class_type": "KSampler", "inputs": {
            "model": list(model), "positive": list(positive), "negative": list(negative), "latent_image": [lat, 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    }


def capture(**items):
    return {f"cap_{k}": {"class_type": "DMTestCapture", "inputs": {"value": list(v), "key": k}} for k, v in items.items()}


# ----------------------------------------------------------------------------------------------------------------
# token positions with ComfyUI's real CLIP tokenizers


def _token_at(clip, text, pos):
    tokens = clip.tokenize(text)["l"]
    flat = [t for chunk in tokens for t in chunk]
    inner = clip.tokenizer.clip_l if hasattr(clip.tokenizer, "clip_l") else getattr(clip.tokenizer, clip.tokenizer.clip)
    return inner.inv_vocab[flat[pos][0]], flat[pos][1]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_token_positions_short_long_weighted(gc, tiny_sd15, tiny_sdxl, family):
    clip = {"sd15": tiny_sd15, "sdxl": tiny_sdxl}[family].clip
    suffix = gc.DEFAULT_SUFFIX
    # short: BOS a red apple , isolated on a plain green -> 9
    text = "a red apple, " + suffix
    pos, _ = gc.key_token_positions(clip, text, suffix, "green")
    assert pos == [9]
    assert _token_at(clip, text, 9)[0] == "green</w>"
    # long (> 75 tokens): the word lands in the second 77-token chunk
    long_text = " ".join(["apple"] * 80) + ", " + suffix
    pos, tokens = gc.key_token_positions(clip, long_text, suffix, "green")
    assert len(tokens["l"]) == 2 and len(pos) == 1 and pos[0] > 77
    assert pos[0] == 77 + 1 + (80 - 75) + 5  # chunk 1: BOS, 5 apples, ",", isolated, on, a, plain -> 77 + 11
    assert _token_at(clip, long_text, pos[0])[0] == "green</w>"
    # weighted text keeps the position, the weight rides along
    weighted = "(a red apple:1.3), isolated on a (plain green:1.2) screen background"
    pos_w, _ = gc.key_token_positions(clip, weighted, suffix, "green")
    assert pos_w == [9]
    assert _token_at(clip, weighted, 9) == ("green</w>", 1.2)
    # "green" in the subject is not the canvas: only the suffix's occurrence is used
    pos_s, _ = gc.key_token_positions(clip, "a green apple, " + suffix, suffix, "green")
    assert pos_s == [9] and _token_at(clip, "a green apple, " + suffix, 2)[0] == "green</w>"
    # ... nor when the suffix lacks the word (#19 N9): an error naming the suffix, not the subject's "green"
    plain = "isolated on a plain studio background"
    with pytest.raises(ValueError, match="^suffix: it does not contain the key colour's word 'green'"):
        gc.key_token_positions(clip, "a green apple, " + plain, plain, "green")


def test_missing_key_word_is_a_clear_error(gc, tiny_sd15):
    m = tiny_sd15
    with pytest.raises(ValueError, match="^suffix: it does not contain the key colour's word 'green'"):
        gc.apply_green_control(m.model, m.clip, m.vae, "a red apple", "", "green", 0.5, 0.7,
                               "isolated on a white background", "", 0.3, 0.3, 0.0)


@pytest.mark.parametrize("node", ["DiffuMattingGreenControlSampler", "DiffuMattingGreenControl"])
@pytest.mark.parametrize("suffix", ["isolated on a plain studio background", ""])
def test_subject_colour_word_does_not_stand_in_for_the_suffix(gc, run_prompt, node, suffix):
    """#19 N9: subject "a green apple" with a suffix lacking "green" (or an empty suffix) is refused with an error
    naming the suffix; it used to sample with the subject's "green" as the mask token."""
    inputs = {"model": ["m", 0], "clip": ["m", 1], "vae": ["m", 2], "subject": "a green apple", "negative": "",
              "key_colour": "chroma green #00B140", "strength": 0.8, "suffix": suffix}
    if node == "DiffuMattingGreenControlSampler":
        inputs |= {"seed": 7, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "width": 64,
                   "height": 64, "batch_size": 1}
        out_ref = ("n", 1)
    else:
        out_ref = ("n", 0)
    prompt = {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
              "n": {"class_type": node, "inputs": inputs}} | capture(out=out_ref)
    err = run_prompt(prompt, expect_error=True)["execution_error"]
    assert err["exception_type"].endswith("ValueError"), err
    assert err["exception_message"].startswith("suffix: it does not contain the key colour's word 'green'"), err


def test_blue_key_rewrites_suffix(gc, tiny_sd15):
    m = tiny_sd15
    res = gc.apply_green_control(m.model, m.clip, m.vae, "a frog", "", "blue", 0.5, 0.7,
                                 gc.DEFAULT_SUFFIX, "", 0.3, 0.3, 0.0)
    assert res.prompt == "a frog, isolated on a plain blue screen background"
    assert res.key.preset == "chroma_blue" and res.key.word == "blue"
    assert res.settings.token_ids == (8,)  # BOS a frog , isolated on a plain blue


# ----------------------------------------------------------------------------------------------------------------
# recorder: shapes and cond/uncond order


@pytest.mark.parametrize("order", [[1, 0], [0, 1]])
def test_recorded_maps_take_the_cond_half(gc, tiny_sd15, order):
    from diffumatting.green_control import cross_attention_probs

    dm = tiny_sd15.model.model.diffusion_model
    block = ("output", 3)  # tiny SD1.5: 1/2-resolution block
    lookup = gc.unet_attn2_lookup(dm)
    state = gc.RunState(gc.GreenSettings([5, 7], 77, torch.zeros(1, 4, 1, 1), 1.0, 1.0, 0.3, 0.3), lookup)
    attn = lookup(block, 0)
    assert attn is not None and hasattr(attn, "to_q")
    b, h, w = 2, 4, 4
    c = attn.to_q.in_features
    gen = torch.Generator().manual_seed(0)
    cond_n, uncond_n = torch.randn(b, h * w, c, generator=gen), torch.randn(b, h * w, c, generator=gen) * 3
    cond_ctx, uncond_ctx = torch.randn(b, 77, 768, generator=gen), torch.randn(b, 77, 768, generator=gen)
    parts = {0: (cond_n, cond_ctx), 1: (uncond_n, uncond_ctx)}
    n = torch.cat([parts[i][0] for i in order])
    ctx = torch.cat([parts[i][1] for i in order])
    eo = {"block": block, "block_index": 0, "cond_or_uncond": order, "activations_shape": [2 * b, c, h, w],
          "original_shape": [2 * b, 4, 2 * h, 2 * w]}
    # through the attn2 patch ComfyUI calls, with the state where the OUTER_SAMPLE wrapper puts it
    assert gc.record_attn2_patch(n, ctx, ctx, dict(eo, **{gc.STATE_KEY: state}))[0] is n
    assert len(state.maps) == 1
    state.maps.clear()
    state.record(n, ctx, **eo)
    assert len(state.maps) == 1
    recorded, hw = state.maps[0]
    assert hw == (h, w) and recorded.shape == (b, 1, h * w, 1)
    expected = cross_attention_probs(attn, cond_n, cond_ctx, [5, 7]).mean(dim=(1, 3))
    torch.testing.assert_close(recorded.reshape(b, h * w), expected)
    # blocks at other resolutions (full latent size here) are not recorded
    state.record(n, ctx, **dict(eo, original_shape=[2 * b, 4, h, w]))
    assert len(state.maps) == 1
    # a context of another length (not a multiple of the prompt's) is skipped; a repeated one is summed back
    state.record(n, torch.randn(2 * b, 100, 768), **eo)
    assert len(state.maps) == 1
    state.record(n, ctx.repeat(1, 2, 1), **eo)
    torch.testing.assert_close(state.maps[1][0], recorded)


def test_maps_recorded_in_real_run_have_latent_shapes(gc, run_prompt, monkeypatch):
    seen = []
    original = gc.RunState.anchor

    def spy(self, x0, sigma, sample_sigmas):
        seen.append(([(tuple(m.shape), hw) for m, hw in self.maps], tuple(x0.shape)))
        return original(self, x0, sigma, sample_sigmas)

    monkeypatch.setattr(gc.RunState, "anchor", spy)
    prompt = green_control() | ksampler(("gc", 0), steps=2, size=64, batch=2) | capture(latent=("ks", 0))
    run_prompt(prompt)
    assert len(seen) == 2  # euler: one evaluation per step
    for maps, x0_shape in seen:
        assert x0_shape == (2, 4, 8, 8)
        # tiny SD1.5 (64 px -> 8x8 latent, channel_mult 1,2,2, one res block): 1/2 blocks input 3, output 2,3
        # at 4x4; 1/4 blocks input 5, middle, output 0,1 at 2x2; the full-size blocks (8x8) are not recorded
        sizes = sorted(hw for _, hw in maps)
        assert sizes.count((4, 4)) == 3 and sizes.count((2, 2)) == 4 and len(sizes) == 7, sizes
        assert all(shape == (2, 1, hw[0] * hw[1], 1) for shape, hw in maps)


# ----------------------------------------------------------------------------------------------------------------
# samplers and chains


def test_ksampler_runs_and_resets_per_run(gc, run_prompt, green_runs):
    def prompt(seed):
        return green_control() | observe(("gc", 0)) | ksampler(("obs", 0), steps=3, seed=seed)

    out = run_prompt(prompt(1) | capture(latent=("ks", 0), model=("gc", 0), runs=("obs", 1)))
    runs = out["runs"]
    assert torch.isfinite(out["latent"]["samples"]).all()
    assert len(runs) == 1 and runs.last.finished
    assert runs.last.evaluations == 3 and runs.last.anchored == 3  # end 0.7 of 3 steps: progress 0, 1/3, 2/3
    options = out["model"].model_options["transformer_options"]
    assert gc.STATE_KEY not in options and gc.RUNS_KEY not in options  # nothing of a run on the patched MODEL
    first, first_mask = runs.last, runs.last.last_mask.clone()
    out2 = run_prompt(prompt(2) | capture(model2=("gc", 0), runs2=("obs", 1), latent2=("ks", 0)))  # cached MODEL
    assert out2["model2"] is out["model"]
    second = out2["runs2"].last
    assert len(out2["runs2"]) == 1 and second is not first
    assert second.evaluations == 3  # fresh state: not 6
    assert len(runs) == 1 and first.evaluations == 3 and torch.equal(first.last_mask, first_mask)  # first kept
    assert not torch.equal(second.last_mask, first_mask)  # another seed, another mask


def test_two_samplers_on_one_patched_model_each_get_their_own_run(gc, run_prompt, green_runs):
    """Two KSamplers share one GreenControl MODEL (different seeds and step counts): each run has its own state,
    and each one's mask is the one the same sampler gives alone."""
    def branch(name, seed, steps):
        return observe(("gc", 0), f"obs_{name}") | ksampler((f"obs_{name}", 0), steps=steps, seed=seed, name=name)

    both = run_prompt(green_control() | branch("a", 1, 2) | branch("b", 2, 3) |
                      capture(ra=("obs_a", 1), rb=("obs_b", 1), la=("a", 0), lb=("b", 0)))
    ra, rb = both["ra"], both["rb"]
    assert len(ra) == 1 and len(rb) == 1 and ra.last is not rb.last
    assert ra.last.evaluations == 2 and rb.last.evaluations == 3
    assert not torch.equal(ra.last.last_mask, rb.last.last_mask)
    for name, seed, steps, runs in (("a", 1, 2, ra), ("b", 2, 3, rb)):
        solo = run_prompt(green_control() | observe(("gc", 0), "solo") | ksampler(("solo", 0), steps=steps, seed=seed)
                          | capture(**{f"solo_{name}": ("solo", 1), f"latent_{name}": ("ks", 0)}))[f"solo_{name}"]
        assert len(solo) == 1
        torch.testing.assert_close(runs.last.last_mask, solo.last.last_mask)


def test_schedule_end_turns_anchoring_off(gc, run_prompt, green_runs):
    out = run_prompt(green_control(end=0.5) | observe(("gc", 0)) | ksampler(("obs", 0), steps=4) |
                     capture(runs=("obs", 1), latent=("ks", 0)))
    state = out["runs"].last
    assert state.evaluations == 4 and state.anchored == 2  # progress 0, 0.25 anchored; 0.5, 0.75 not
    out = run_prompt(green_control(end=0.0) | observe(("gc", 0)) | ksampler(("obs", 0), steps=2) |
                     capture(runs=("obs", 1), latent=("ks", 0)))
    assert out["runs"].last.evaluations == 2 and out["runs"].last.anchored == 0


def test_strength_zero_matches_unpatched_model(gc, run_prompt):
    base = green_control(strength=0.0) | ksampler(("m", 0), steps=2) | capture(latent=("ks", 0))
    plain = run_prompt(base)["latent"]["samples"]
    patched = run_prompt(green_control(strength=0.0) | ksampler(("gc", 0), steps=2) |
                         capture(latent=("ks", 0)))["latent"]["samples"]
    torch.testing.assert_close(patched, plain)


def test_ksampler_advanced_and_sdxl(gc, run_prompt, green_runs):
    prompt = green_control(family="sdxl") | observe(("gc", 0)) | {
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["obs", 0], "positive": ["gc", 1], "negative": ["gc", 2], "latent_image": ["lat", 0],
            "add_noise": "enable", "noise_seed": 3, "steps": 4, "cfg": 4.0, "sampler_name": "heun",
            "scheduler": "karras", "start_at_step": 1, "end_at_step": 4, "return_with_leftover_noise": "disable"}},
    } | capture(latent=("ks", 0), runs=("obs", 1))
    out = run_prompt(prompt)
    state = out["runs"].last
    assert torch.isfinite(out["latent"]["samples"]).all()
    # heun: 2 evaluations per step except the last (3 steps -> 5), all recorded
    assert state.evaluations == 5 and state.last_mask.shape == (1, 1, 8, 8)


def test_sampler_custom_advanced(gc, run_prompt, green_runs):
    prompt = green_control() | observe(("gc", 0)) | {
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["obs", 0], "positive": ["gc", 1],
                                                          "negative": ["gc", 2], "cfg": 5.0}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["gc", 0], "scheduler": "simple",
                                                               "steps": 3, "denoise": 1.0}},
        "sca": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["lat", 0]}},
    } | capture(latent=("sca", 0), runs=("obs", 1))
    out = run_prompt(prompt)
    state = out["runs"].last
    assert out["latent"]["samples"].shape == (2, 4, 8, 8) and state.evaluations == 3
    assert state.last_mask.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("lora_first", [True, False])
def test_lora_and_controlnet_in_the_chain(gc, run_prompt, tiny_lora, green_runs, lora_first):
    nodes = green_control()
    lora = {"class_type": "LoraLoader", "inputs": {"lora_name": tiny_lora, "strength_model": 1.0,
                                                   "strength_clip": 1.0}}
    if lora_first:  # LoraLoader -> GreenControl
        lora["inputs"].update(model=["m", 0], clip=["m", 1])
        nodes["gc"]["inputs"].update(model=["lora", 0], clip=["lora", 1])
        sampler_model = ("gc", 0)
    else:  # GreenControl -> LoraLoader
        lora["inputs"].update(model=["gc", 0], clip=["m", 1])
        sampler_model = ("lora", 0)
    nodes["lora"] = lora
    nodes["img"] = {"class_type": "DMTestImage", "inputs": {"width": 64, "height": 64, "batch": 1,
                                                            "kind": "greenscreen"}}
    nodes["cn"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["gc", 1], "negative": ["gc", 2], "control_net": ["m", 3], "image": ["img", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    prompt = nodes | observe(sampler_model) | ksampler(("obs", 0), positive=("cn", 0), negative=("cn", 1), steps=2) | \
        capture(latent=("ks", 0), model=sampler_model, runs=("obs", 1))
    out = run_prompt(prompt)
    model = out["model"]
    assert model.patches, "the LoRA did not patch the model"
    assert out["runs"].last.evaluations == 2
    assert torch.isfinite(out["latent"]["samples"]).all()


@pytest.mark.parametrize("other_first, replace", [(True, False), (False, False), (True, True)])
def test_stacks_with_another_nodes_attn2_patches(gc, run_prompt, spy_nodes, green_runs, other_first, replace):
    nodes = green_control()
    other = {"class_type": "DMTestOtherAttn2", "inputs": {"replace": replace}}
    if other_first:
        other["inputs"]["model"] = ["m", 0]
        nodes["gc"]["inputs"]["model"] = ["other", 0]
        sampler_model = ("gc", 0)
    else:
        other["inputs"]["model"] = ["gc", 0]
        sampler_model = ("other", 0)
    nodes["other"] = other
    spy_nodes.update(patch=0, replace=0)
    out = run_prompt(nodes | observe(sampler_model) | ksampler(("obs", 0), steps=2) |
                     capture(model=sampler_model, latent=("ks", 0), runs=("obs", 1)))
    patches = out["model"].model_options["transformer_options"]["patches"]["attn2_patch"]
    assert gc.record_attn2_patch in patches and len(patches) == 2
    assert spy_nodes["patch"] > 0 and (spy_nodes["replace"] > 0) == replace
    assert out["runs"].last.evaluations == 2


def test_applying_twice_installs_once(gc, run_prompt):
    nodes = green_control()
    nodes["gc2"] = {"class_type": "DiffuMattingGreenControl", "inputs": dict(nodes["gc"]["inputs"], model=["gc", 0],
                                                                             strength=0.3)}
    out = run_prompt(nodes | ksampler(("gc2", 0), positive=("gc2", 1), negative=("gc2", 2), steps=2) |
                     capture(model=("gc2", 0), latent=("ks", 0)))
    m = out["model"]
    assert m.model_options["transformer_options"]["patches"]["attn2_patch"].count(gc.record_attn2_patch) == 1
    assert m.model_options["sampler_post_cfg_function"].count(gc.anchor_post_cfg) == 1
    assert m.model_options["transformer_options"][gc.CONFIG_KEY].strength == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------------------------------
# the effect: background anchored to the green latent, foreground left to the model


def test_large_strength_background_is_green_latent(gc, run_prompt, tiny_sd15, green_runs):
    out = run_prompt(green_control(strength=1.0, end=1.0) | observe(("gc", 0)) | ksampler(("obs", 0), steps=3, batch=2)
                     | capture(latent=("ks", 0), runs=("obs", 1)))
    latent = out["latent"]["samples"]  # VAE space
    z = gc.vae_key_latent(tiny_sd15.vae, gc.parse_key_colour("green")).to(latent)  # [1,4,1,1] VAE space
    mask = out["runs"].last.last_mask.to(latent.device)
    bg = (mask >= 1.0).expand_as(latent)
    fg = (mask <= 0.0).expand_as(latent)
    assert bg.any() and fg.any(), "the random model's mask should have both background and foreground pixels"
    diff = (latent - z.expand_as(latent)).abs()
    assert diff[bg].max() < 1e-4  # euler's last step returns the anchored x0 on the background
    assert diff[fg].mean() > 0.05  # the foreground is the model's own prediction


def test_tiny_vae_green_latent_is_finite(gc, tiny_sd15, tiny_sdxl):
    for m in (tiny_sd15, tiny_sdxl):
        z = gc.vae_key_latent(m.vae, gc.parse_key_colour("green"))
        assert z.shape == (1, 4, 1, 1) and torch.isfinite(z).all()
        z_blue = gc.vae_key_latent(m.vae, gc.parse_key_colour("blue"))
        assert not torch.allclose(z, z_blue)


def test_nan_vae_is_a_clear_error(gc, tiny_sd15):
    class NanVAE:
        def encode(self, img):
            return torch.full((1, 4, img.shape[1] // 8, img.shape[2] // 8), float("nan"))

    with pytest.raises(ValueError, match="non-finite"):
        gc.vae_key_latent(NanVAE(), gc.parse_key_colour("green"))


# ----------------------------------------------------------------------------------------------------------------
# interruption


@pytest.mark.parametrize("how", ["raise_in_post_cfg", "comfy_interrupt_in_callback"])
def test_interrupted_run_leaves_the_model_reusable(gc, tiny_sd15, how):
    import comfy.model_management as mm
    import comfy.sample

    m = tiny_sd15
    res = gc.apply_green_control(m.model, m.clip, m.vae, "a red apple", "", "green", 0.8, 0.7, gc.DEFAULT_SUFFIX, "",
                                 0.3, 0.3, 0.0)
    patched, pos, neg = res.model, res.positive, res.negative
    runs = gc.attach_run_log(patched)
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    calls = {"n": 0}
    breaking, callback = patched, None
    if how == "raise_in_post_cfg":
        def interrupt_on_second(args):
            calls["n"] += 1
            if calls["n"] == 2:
                raise mm.InterruptProcessingException()
            return args["denoised"]

        breaking = patched.clone()
        breaking.set_model_sampler_post_cfg_function(interrupt_on_second)
    else:  # what Cancel does: the flag is set, the next comfy.ops layer raises
        def callback(step, x0, x, total):
            calls["n"] += 1
            if step == 0:
                mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        comfy.sample.sample(breaking, noise, 4, 5.0, "euler", "normal", pos, neg, latent, disable_pbar=True, seed=0,
                            callback=callback)
    assert calls["n"] >= 1 and not mm.processing_interrupted()
    assert gc.STATE_KEY not in patched.model_options["transformer_options"]
    assert gc.STATE_KEY not in breaking.model_options["transformer_options"]
    assert len(runs) == 0  # an interrupted run reports nothing
    out = comfy.sample.sample(patched, noise, 4, 5.0, "euler", "normal", pos, neg, latent, disable_pbar=True, seed=0)
    assert torch.isfinite(out).all()
    assert len(runs) == 1 and runs.last.finished and runs.last.evaluations == 4  # a fresh run: not 4 + the 1-2 before


# ----------------------------------------------------------------------------------------------------------------
# GreenControlSampler


def test_green_control_sampler_node(gc, run_prompt):
    prompt = {
        "m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
        "gs": {"class_type": "DiffuMattingGreenControlSampler", "inputs": {
            "model": ["m", 0], "clip": ["m", 1], "vae": ["m", 2], "subject": "a red apple", "negative": "",
            "key_colour": "green", "strength": 0.8, "seed": 7, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "width": 64, "height": 96, "batch_size": 2}},
    } | capture(latent=("gs", 0), mask=("gs", 1))
    out = run_prompt(prompt)
    assert out["latent"]["samples"].shape == (2, 4, 12, 8)
    mask = out["mask"]
    assert mask.shape == (2, 96, 64) and mask.min() >= 0 and mask.max() <= 1
    assert (mask > 0.5).any() and (mask < 0.5).any()
    ui_outputs = out["_history"]["outputs"].get("gs", {})
    assert ui_outputs.get("images"), f"no mask preview in the UI outputs: {ui_outputs}"


def test_green_control_outputs_the_key_it_painted_and_takes_a_connected_one(gc, run_prompt):
    """The 'key' output is the KeyColour the canvas was anchored to; a connected key (here a custom hex from the
    KeyColour node) wins over the widget, its colour word goes into the prompt and its latent is the anchor."""
    def prompt(key_colour, key=None):
        inputs = {"model": ["m", 0], "clip": ["m", 1], "vae": ["m", 2], "subject": "a red apple", "negative": "",
                  "key_colour": key_colour, "strength": 0.8, "seed": 7, "steps": 1, "cfg": 5.0,
                  "sampler_name": "euler", "scheduler": "normal", "width": 64, "height": 64, "batch_size": 1}
        if key is not None:
            inputs["key"] = key
        return {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
                "kc": {"class_type": "DiffuMattingKeyColour", "inputs": {"key_colour": "custom hex",
                                                                         "key_hex": "#1040C0"}},
                "gs": {"class_type": "DiffuMattingGreenControlSampler", "inputs": inputs}} | capture(key=("gs", 2))

    out = run_prompt(prompt("chroma blue #0047BB"))
    assert len(out["key"]) == 1 and out["key"][0].preset == "chroma_blue"
    out = run_prompt(prompt("green", key=["kc", 0]))  # an older value in the widget, and a connected key
    assert out["key"][0].hex == "#1040c0" and out["key"][0].word == "blue"
    options = gc.DiffuMattingGreenControl.INPUT_TYPES()["required"]["key_colour"][1]["options"]
    assert "auto" in options and "chroma green #00B140" in options  # auto: chosen from the subject text (issue 20)
    assert gc.DEFAULT_KEY == "chroma green #00B140"


def _sampler(model, subject, seed, steps=2):
    return {"class_type": "DiffuMattingGreenControlSampler", "inputs": {
        "model": list(model), "clip": ["m", 1], "vae": ["m", 2], "subject": subject, "negative": "",
        "key_colour": "chroma green #00B140", "strength": 0.8, "seed": seed, "steps": steps, "cfg": 5.0,
        "sampler_name": "euler", "scheduler": "normal", "width": 64, "height": 64, "batch_size": 1}}


def test_two_green_control_samplers_on_one_patched_model_report_their_own_masks(gc, run_prompt):
    """Both samplers take the same GreenControl-patched MODEL (other subjects and seeds): each mask output is the
    mask of ITS run, the one the same sampler gives when it runs alone."""
    both = run_prompt(green_control() | {"s1": _sampler(("gc", 0), "a red apple", 1),
                                         "s2": _sampler(("gc", 0), "a blue car", 2, steps=3)} |
                      capture(mask1=("s1", 1), mask2=("s2", 1)))
    assert not torch.equal(both["mask1"], both["mask2"])
    for name, subject, seed, steps in (("mask1", "a red apple", 1, 2), ("mask2", "a blue car", 2, 3)):
        alone = run_prompt(green_control() | {"solo": _sampler(("gc", 0), subject, seed, steps)} |
                           capture(solo=("solo", 1)))["solo"]
        torch.testing.assert_close(both[name], alone)


@pytest.mark.parametrize("old, preset", [("green", "chroma_green"), ("pure_green", "pure_green"),
                                         ("blue", "chroma_blue"), ("pure_blue", "pure_blue"), ("magenta", "magenta"),
                                         ("chroma_green", "chroma_green")])
def test_old_key_colour_values_still_validate_and_run(gc, run_prompt, old, preset):
    """Saved workflows hold the old ids ("green", "pure_green", ...): the combo lists only the labels, and
    validate_inputs accepts the old values (ComfyUI then skips its list check), which resolve to the same preset."""
    assert old not in gc.KEY_CHOICES
    out = run_prompt(green_control(key_colour=old) | capture(key=("gc", 3), positive=("gc", 1)))
    assert len(out["key"]) == 1 and out["key"][0].preset == preset
    err = run_prompt(green_control(key_colour="teal-ish") | capture(key=("gc", 3)), expect_error=True)
    assert "validation_error" in err


# ----------------------------------------------------------------------------------------------------------------
# full-size random SD1.5 checkpoint


@pytest.mark.slow
def test_full_size_random_sd15(gc, run_prompt, random_sd15_checkpoint, green_runs):
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": random_sd15_checkpoint}},
        "gc": {"class_type": "DiffuMattingGreenControl", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "subject": "a red apple", "negative": "",
            "key_colour": "green", "strength": 1.0, "schedule_end": 1.0}},
    } | observe(("gc", 0)) | ksampler(("obs", 0), steps=2, size=64) | \
        capture(latent=("ks", 0), model=("gc", 0), runs=("obs", 1))
    out = run_prompt(prompt)
    state = out["runs"].last
    # SD1.5 at 64 px (8x8 latent): 1/2 blocks (4x4) input 4,5 + output 6,7,8; 1/4 blocks (2x2) input 7,8 + output 3,4,5
    assert state.evaluations == 2 and state.last_mask.shape == (1, 1, 8, 8)
    latent = out["latent"]["samples"]
    assert torch.isfinite(latent).all()
    settings = out["model"].model_options["transformer_options"][gc.CONFIG_KEY]
    z_vae = (settings.z_key / 0.18215).expand_as(latent)  # SD1.5 latent scale: back to VAE space
    bg = (state.last_mask >= 1.0).expand_as(latent)
    fg = (state.last_mask <= 0.0).expand_as(latent)
    assert bg.any() and fg.any()
    diff = (latent - z_vae).abs()
    assert diff[bg].max() < 1e-3 and diff[fg].mean() > 0.05
