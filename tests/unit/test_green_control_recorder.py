"""green_control.recorder: per-run state (RunState), its settings, the UNet attn2 lookup and the run log."""

from __future__ import annotations

import copy

import pytest
import torch

from diffumatting.green_control import cross_attention_probs
from diffumatting.green_control.recorder import GreenSettings, RunLog, RunState, unet_attn2_lookup

Z = torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1)


def _settings(**kw):
    args = dict(token_ids=[5, 7], cond_len=77, z_key=Z, strength=1.0, end=1.0, threshold=0.3, softness=0.3)
    args.update(kw)
    return GreenSettings(**args)


class _Attn(torch.nn.Module):
    def __init__(self, c=16, d=12, heads=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.heads = heads
        self.to_q = torch.nn.Linear(c, heads * 8, bias=False)
        self.to_k = torch.nn.Linear(d, heads * 8, bias=False)
        with torch.no_grad():
            self.to_q.weight.copy_(torch.randn(self.to_q.weight.shape, generator=g))
            self.to_k.weight.copy_(torch.randn(self.to_k.weight.shape, generator=g))


class _Transformer(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.transformer_blocks[0].attn2 = attn


class _UNet(torch.nn.Module):
    """The container layout of ComfyUI's UNetModel: input_blocks / middle_block / output_blocks of layers."""

    def __init__(self, attn):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Identity()),
                                                 torch.nn.Sequential(torch.nn.Identity(), _Transformer(attn))])
        self.middle_block = torch.nn.Sequential(torch.nn.Identity())
        self.output_blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Identity())])


def test_settings_are_validated_and_plain_data():
    s = _settings(token_ids=[5.0, 7], prior_scale=0.0)
    assert s.token_ids == (5, 7) and s.prior_scale is None and s.levels == (2, 4)
    assert s.z_key.dtype == torch.float32 and s.z_key.device.type == "cpu"
    clone = copy.deepcopy(s)
    assert clone.token_ids == s.token_ids and torch.equal(clone.z_key, s.z_key) and clone.z_key is not s.z_key
    for bad, match in [(dict(token_ids=[]), "token_ids"), (dict(token_ids=[77]), "outside the encoded prompt"),
                       (dict(z_key=torch.zeros(1, 4, 2, 2)), "z_key"),
                       (dict(z_key=torch.full((1, 4, 1, 1), float("nan"))), "z_key"),
                       (dict(softness=0.0), "softness"), (dict(strength=float("nan")), "strength"),
                       (dict(threshold=1.5), "threshold")]:
        with pytest.raises(ValueError, match=match):
            _settings(**bad)


def test_unet_lookup_finds_attn2_and_caches():
    attn = _Attn()
    lookup = unet_attn2_lookup(_UNet(attn))
    assert lookup(("input", 1), 0) is attn
    assert lookup(("input", 0), 0) is None and lookup(("middle", 0), 0) is None and lookup(("input", 1), 3) is None
    assert lookup(("output", 0)) is None and lookup(("other", 0)) is None


@pytest.mark.parametrize("order", [[1, 0], [0, 1]])
def test_record_takes_the_cond_chunk_and_skips_other_blocks(order):
    attn = _Attn()
    state = RunState(_settings(token_ids=[1, 2], cond_len=4), unet_attn2_lookup(_UNet(attn)))
    b, h, w = 2, 2, 3
    g = torch.Generator().manual_seed(1)
    cond_n, uncond_n = torch.randn(b, h * w, 16, generator=g), torch.randn(b, h * w, 16, generator=g) * 5
    cond_ctx, uncond_ctx = torch.randn(b, 4, 12, generator=g), torch.randn(b, 4, 12, generator=g)
    parts = {0: (cond_n, cond_ctx), 1: (uncond_n, uncond_ctx)}
    n = torch.cat([parts[i][0] for i in order])
    ctx = torch.cat([parts[i][1] for i in order])
    kw = dict(block=("input", 1), block_index=0, cond_or_uncond=order, activations_shape=[2 * b, 16, h, w],
              original_shape=[2 * b, 4, 2 * h, 2 * w])
    state.record(n, ctx, **kw)
    assert len(state.maps) == 1 and state.maps[0][1] == (h, w)
    expected = cross_attention_probs(attn, cond_n, cond_ctx, [1, 2]).mean(dim=(1, 3))
    torch.testing.assert_close(state.maps[0][0].reshape(b, h * w), expected)
    state.record(n, ctx, **dict(kw, original_shape=[2 * b, 4, 8 * h, 8 * w]))  # 1/8: not a recorded level
    state.record(n, torch.randn(2 * b, 5, 12), **kw)  # not the prompt's context length
    state.record(n, ctx, **dict(kw, block=("input", 0)))  # no cross-attention there
    state.record(n, ctx, **dict(kw, cond_or_uncond=[1, 1]))  # uncond only
    assert len(state.maps) == 1


def _half_map(b=2, h=4, w=4):
    """A colour-word map that is 1 on the right half of the latent (background) and 0 on the left."""
    m = torch.zeros(b, 1, h, w)
    m[..., w // 2:] = 1.0
    return m.reshape(b, 1, h * w, 1)


def test_anchor_pulls_the_background_to_the_key_latent_and_counts():
    state = RunState(_settings())
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    assert state.anchor(x0, torch.tensor([1.0, 1.0]), None) is x0  # nothing recorded: untouched, not counted
    assert state.evaluations == 0 and state.last_mask is None
    state.add_map(_half_map(), (4, 4))
    out = state.anchor(x0, torch.tensor([1.0, 1.0]), None)
    assert state.evaluations == 1 and state.anchored == 1 and state.maps == []
    assert state.last_mask.shape == (2, 1, 4, 4) and state.last_mask.device.type == "cpu"
    torch.testing.assert_close(out[..., 2:], Z.expand(2, 4, 4, 2))
    torch.testing.assert_close(out[..., :2], x0[..., :2])
    # past schedule_end: the mask is still made (and reported), the latent is not anchored
    late = RunState(_settings(end=0.5))
    late.add_map(_half_map(), (4, 4))
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.0])
    assert late.anchor(x0, torch.tensor([1.0, 1.0]), sigmas) is x0
    assert late.evaluations == 1 and late.anchored == 0 and late.last_mask is not None


def test_two_runs_of_one_settings_never_share_state():
    settings = _settings()
    a, b = RunState(settings), RunState(settings)
    x0 = torch.zeros(2, 4, 4, 4)
    a.add_map(_half_map(), (4, 4))
    a.anchor(x0, torch.tensor([1.0]), None)
    flipped = _half_map().reshape(2, 1, 4, 4).flip(-1).reshape(2, 1, 16, 1)
    b.add_map(flipped, (4, 4))
    b.anchor(x0, torch.tensor([1.0]), None)
    b.add_map(flipped, (4, 4))
    b.anchor(x0, torch.tensor([1.0]), None)
    assert a.evaluations == 1 and b.evaluations == 2
    torch.testing.assert_close(a.last_mask, b.last_mask.flip(-1))
    assert not torch.equal(a.last_mask, b.last_mask)


def test_batch_mismatch_and_bad_maps():
    state = RunState(_settings())
    state.add_map(_half_map(b=1), (4, 4))
    x0 = torch.randn(2, 4, 4, 4)
    assert state.anchor(x0, torch.tensor([1.0, 1.0]), None) is x0 and state.evaluations == 0
    with pytest.raises(ValueError, match="reduced"):
        state.add_map(torch.zeros(2, 1, 15, 1), (4, 4))


def test_run_log():
    runs = RunLog()
    assert runs.last is None and len(runs) == 0
    s1, s2 = RunState(_settings()), RunState(_settings())
    runs.append(s1)
    runs.append(s2)
    assert runs.runs == [s1, s2] and runs.last is s2 and len(runs) == 2
