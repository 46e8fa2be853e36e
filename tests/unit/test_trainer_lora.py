"""Unit tests of the LoRA injection/export (trainer/lora.py) and the loop's options/checkpoint helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffumatting.trainer.lora import LoRANetwork, find_targets, lora_key


class _Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c, bias=False), nn.Linear(c, c, bias=False), nn.Linear(c, c, bias=False)
        self.to_out = nn.Sequential(nn.Linear(c, c), nn.Dropout(0.0))


class _GEGLU(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.proj = nn.Linear(c, c)

    def forward(self, x):
        return self.proj(x)


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn1, self.attn2 = _Attn(c), _Attn(c)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(_GEGLU(c), nn.Dropout(0.0), nn.Linear(c, c))
        self.norm1 = nn.LayerNorm(c)


class _Transformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.proj_in = nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList([_Block(c)])

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.proj_in(x).flatten(2).transpose(1, 2)
        blk = self.transformer_blocks[0]
        y = y + blk.attn1.to_out(blk.attn1.to_v(y)) + blk.ff.net(y)
        return y.transpose(1, 2).reshape(b, c, h, w)


class TinyUNet(nn.Module):
    """Module paths like ComfyUI's UNet: input_blocks.<i>.<j>..."""

    def __init__(self, c=8):
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, c, 3, padding=1)),
                                           nn.Sequential(nn.Conv2d(c, c, 3, padding=1), _Transformer(c))])
        self.out = nn.Sequential(nn.GroupNorm(2, c), nn.SiLU(), nn.Conv2d(c, 4, 3, padding=1))

    def forward(self, x):
        for blk in self.input_blocks:
            x = blk(x)
        return self.out(x)


def _randomise(net):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.layers.values():
            layer.up.weight.copy_(torch.randn(layer.up.weight.shape, generator=g) * 0.1)


def test_find_targets_kinds():
    unet = TinyUNet()
    names = [n for n, _ in find_targets(unet, ("attn", "conv"))]
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_q" in names
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0" in names
    assert "input_blocks.0.0" in names and "out.2" in names and "input_blocks.1.1.proj_in" in names
    assert not any(".ff." in n for n in names)
    ff = [n for n, _ in find_targets(unet, ("ff",))]
    assert ff == ["input_blocks.1.1.transformer_blocks.0.ff.net.0.proj", "input_blocks.1.1.transformer_blocks.0.ff.net.2"]
    with pytest.raises(ValueError, match="targets"):
        find_targets(unet, ("bogus",))


def test_hooks_start_as_identity_then_change_and_detach_restores():
    torch.manual_seed(0)
    unet = TinyUNet()
    x = torch.randn(2, 4, 6, 6)
    base = unet(x)
    net = LoRANetwork(unet, rank=2, conv_rank=2).attach()
    assert torch.equal(unet(x), base)  # up = 0 at start
    _randomise(net)
    changed = unet(x)
    assert not torch.allclose(changed, base, atol=1e-6)
    net.multiplier = 0.0
    assert torch.equal(unet(x), base)
    net.multiplier = 1.0
    net.detach()
    assert torch.equal(unet(x), base)


def test_gradients_reach_lora_only():
    unet = TinyUNet()
    for p in unet.parameters():
        p.requires_grad_(False)
    net = LoRANetwork(unet, rank=2).attach()
    _randomise(net)
    unet(torch.randn(1, 4, 6, 6)).square().mean().backward()
    used = ["input_blocks_0_0", "input_blocks_1_0", "input_blocks_1_1_proj_in", "out_2",
            "input_blocks_1_1_transformer_blocks_0_attn1_to_v", "input_blocks_1_1_transformer_blocks_0_attn1_to_out_0"]
    for k in used:
        assert net.layers[k].down.weight.grad is not None and net.layers[k].up.weight.grad.abs().sum() > 0, k
    # layers the forward never calls (cross-attention here) get no gradient
    assert net.layers["input_blocks_1_1_transformer_blocks_0_attn2_to_q"].up.weight.grad is None
    assert all(p.grad is None for p in unet.parameters())


def test_export_matches_comfy_merge_formula():
    """ComfyUI merges W' = W + alpha/rank * (up.flatten(1) @ down.flatten(1)).reshape(W.shape): same output as hooks."""
    torch.manual_seed(1)
    unet = TinyUNet()
    x = torch.randn(1, 4, 6, 6)
    net = LoRANetwork(unet, rank=3, alpha=1.5, conv_rank=2, conv_alpha=4.0).attach()
    _randomise(net)
    hooked = unet(x)
    sd = net.export_state_dict(torch.float32)
    net.detach()
    merged = TinyUNet()
    merged.load_state_dict(unet.state_dict())
    mods = dict(merged.named_modules())
    with torch.no_grad():
        for path in net.paths:
            k = lora_key(path)
            down, up, alpha = sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"], sd[f"{k}.alpha"]
            w = mods[path].weight
            w += (alpha / down.shape[0]) * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    assert torch.allclose(merged(x), hooked, atol=1e-5)
    assert sd["lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q.lora_down.weight"].shape == (3, 8)
    assert sd["lora_unet_input_blocks_1_0.lora_down.weight"].shape == (2, 8, 3, 3)
    assert sd["lora_unet_input_blocks_1_0.lora_up.weight"].shape == (8, 2, 1, 1)


def test_export_load_roundtrip_and_mismatch():
    unet = TinyUNet()
    a = LoRANetwork(unet, rank=2)
    _randomise(a)
    sd = a.export_state_dict(torch.float32)
    b = LoRANetwork(TinyUNet(), rank=2)
    b.load_exported(sd)
    for k in a.layers:
        assert torch.equal(a.layers[k].up.weight, b.layers[k].up.weight)
    with pytest.raises(ValueError, match="shape"):
        LoRANetwork(TinyUNet(), rank=3).load_exported(sd)
    sd.pop(next(k for k in sd if k.endswith("lora_up.weight")))
    with pytest.raises(ValueError, match="missing"):
        b.load_exported(sd)
    assert a.metadata()["diffumatting.kind"] == "green_canvas_lora"


@pytest.mark.parametrize("kw", [{"rank": 0}, {"rank": 2, "conv_rank": -1}, {"rank": 2, "alpha": -1.0}])
def test_bad_ranks(kw):
    with pytest.raises(ValueError):
        LoRANetwork(TinyUNet(), **kw)


def test_train_options_validation():
    from diffumatting.trainer.loop import TrainOptions

    TrainOptions(steps=1)
    for kw, word in [({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"targets": ("x",)}, "targets"),
                     ({"precision": "fp8"}, "precision"), ({"t_min": 10, "t_max": 5}, "t_min"),
                     ({"attn_levels": (0,)}, "attn_levels"), ({"lora_name": "x.pt"}, "lora_name"),
                     ({"grad_accum": 0}, "grad_accum")]:
        with pytest.raises(ValueError, match=word):
            TrainOptions(**kw)
    assert TrainOptions(weights={"green": 0.2}).weights.green == 0.2


def test_checkpoint_listing_and_bad_files(tmp_path):
    from safetensors.torch import save_file

    from diffumatting.trainer.loop import list_checkpoints, read_checkpoint

    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "step_00000010.safetensors").write_bytes(b"garbage")
    (d / ".step_00000012.safetensors.abc.partial.safetensors").write_bytes(b"half")
    save_file({"x": torch.zeros(1)}, str(d / "step_00000002.safetensors"))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 10]
    with pytest.raises(ValueError, match="not readable"):
        read_checkpoint(d / "step_00000010.safetensors")
    with pytest.raises(ValueError, match="not a DiffuMatting"):
        read_checkpoint(d / "step_00000002.safetensors")
    save_file({"lora.x": torch.zeros(1)}, str(d / "step_00000004.safetensors"),
              metadata={"diffumatting.train_state": "{}"})  # the previous format
    with pytest.raises(ValueError, match="step_00000004.safetensors was written by an older version.*--no-resume"):
        read_checkpoint(d / "step_00000004.safetensors")


def test_initial_weights_depend_on_seed_only():
    torch.manual_seed(123)
    a = LoRANetwork(TinyUNet(), rank=2, seed=5)
    torch.manual_seed(456)
    b = LoRANetwork(TinyUNet(), rank=2, seed=5)
    c = LoRANetwork(TinyUNet(), rank=2, seed=6)
    k = "input_blocks_1_0"
    assert torch.equal(a.layers[k].down.weight, b.layers[k].down.weight)
    assert not torch.equal(a.layers[k].down.weight, c.layers[k].down.weight)
