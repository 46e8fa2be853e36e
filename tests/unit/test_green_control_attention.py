"""green_control.attention / green_control.mask: recomputed cross-attention and the aggregated green map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffumatting.green_control import aggregate_attention, background_mask, cross_attention_probs, soft_threshold
from diffumatting.green_control.mask import normalize_per_image, x0_prior


class _Attn(torch.nn.Module):
    def __init__(self, query_dim=16, context_dim=12, heads=4, dim_head=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.heads = heads
        self.to_q = torch.nn.Linear(query_dim, heads * dim_head, bias=False)
        self.to_k = torch.nn.Linear(context_dim, heads * dim_head, bias=False)
        with torch.no_grad():
            self.to_q.weight.copy_(torch.randn(self.to_q.weight.shape, generator=g))
            self.to_k.weight.copy_(torch.randn(self.to_k.weight.shape, generator=g) * 0.3)


def _reference(attn, hidden, context):
    q = attn.to_q(hidden)
    k = attn.to_k(context)
    b, n, inner = q.shape
    h = attn.heads
    q = q.view(b, n, h, -1).transpose(1, 2)
    k = k.view(b, context.shape[1], h, -1).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / (inner // h) ** 0.5, dim=-1)  # [B,h,HW,L]


def test_probs_match_explicit_softmax_and_pick_tokens():
    torch.manual_seed(0)
    attn = _Attn()
    hidden = torch.randn(2, 20, 16)
    context = torch.randn(2, 7, 12)
    out = cross_attention_probs(attn, hidden, context, [3, 5])
    ref = _reference(attn, hidden, context)
    assert out.shape == (2, 4, 20, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref[..., [3, 5]], rtol=1e-5, atol=1e-6)
    full = cross_attention_probs(attn, hidden, context, list(range(7)))
    torch.testing.assert_close(full.sum(-1), torch.ones(2, 4, 20))


def test_repeated_context_sums_copies():
    torch.manual_seed(1)
    attn = _Attn()
    hidden = torch.randn(1, 9, 16)
    context = torch.randn(1, 5, 12)
    once = cross_attention_probs(attn, hidden, context, [2])
    thrice = cross_attention_probs(attn, hidden, context.repeat(1, 3, 1), [2], cond_len=5)
    torch.testing.assert_close(thrice, once, rtol=1e-5, atol=1e-6)
    # without cond_len only the first copy counts: a third of the mass
    torch.testing.assert_close(cross_attention_probs(attn, hidden, context.repeat(1, 3, 1), [2]), once / 3)


def test_low_precision_module_gives_float32_and_grads_flow():
    attn = _Attn().to(torch.bfloat16)
    hidden = torch.randn(1, 6, 16, dtype=torch.bfloat16, requires_grad=True)
    context = torch.randn(1, 4, 12, dtype=torch.bfloat16)
    out = cross_attention_probs(attn, hidden, context, [1])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad.float()).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(token_ids=[]), "token_ids"),
        (dict(token_ids=[7]), "token_ids"),
        (dict(token_ids=[1], cond_len=3), "cond_len"),
    ],
)
def test_probs_bad_input(kwargs, match):
    attn = _Attn()
    with pytest.raises(ValueError, match=match):
        cross_attention_probs(attn, torch.randn(1, 4, 16), torch.randn(1, 7, 12), **kwargs)


def _block_map(mask_hw: torch.Tensor, heads=2, tokens=1, hi=0.6, lo=0.1):
    """[B,h,w] bool -> [B,heads,h*w,T] with prob hi where True, lo elsewhere."""
    b, h, w = mask_hw.shape
    p = torch.where(mask_hw, hi, lo).reshape(b, 1, h * w, 1)
    return p.expand(b, heads, h * w, tokens).contiguous(), (h, w)


def test_aggregate_recovers_background_region():
    # background = left half; two blocks at 1/2 and 1/4 of the 16x16 latent
    bg16 = torch.zeros(2, 16, 16, dtype=torch.bool)
    bg16[:, :, :8] = True
    bg16[1] = ~bg16[1]  # second image: right half
    maps = []
    for s in (8, 4):
        small = F.interpolate(bg16[:, None].float(), size=(s, s), mode="area")[:, 0] > 0.5
        maps.append(_block_map(small, heads=3, tokens=2))
    a = aggregate_attention(maps, (16, 16))
    assert a.shape == (2, 1, 16, 16) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    for i in range(2):
        assert a[i, 0].amax() == pytest.approx(1.0) and a[i, 0].amin() == pytest.approx(0.0)
        inside = a[i, 0][bg16[i]]
        outside = a[i, 0][~bg16[i]]
        assert inside.mean() > 0.8 and outside.mean() < 0.2
    raw = aggregate_attention(maps, (16, 16), normalize=False)
    assert raw.max() == pytest.approx(0.6, abs=1e-5) and raw.min() == pytest.approx(0.1, abs=1e-5)


def test_aggregate_averages_heads_and_tokens():
    probs = torch.zeros(1, 2, 4, 2)
    probs[0, 0, 0, 0] = 1.0  # only one head/token sees pixel 0
    probs[0, 1, 3, 1] = 0.5
    raw = aggregate_attention([(probs, (2, 2))], (2, 2), normalize=False)
    torch.testing.assert_close(raw.flatten(), torch.tensor([0.25, 0.0, 0.0, 0.125]))


def test_aggregate_constant_map_is_zero_not_nan():
    a = aggregate_attention([(torch.full((1, 2, 16, 1), 0.3), (4, 4))], (8, 8))
    assert torch.isfinite(a).all() and (a == 0).all()


def test_aggregate_is_differentiable():
    probs = torch.rand(1, 2, 16, 1, requires_grad=True)
    aggregate_attention([(probs, (4, 4))], (8, 8)).sum().backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all()


@pytest.mark.parametrize(
    "maps, out_hw, match",
    [
        ([], (4, 4), "maps"),
        ([(torch.rand(1, 2, 15, 1), (4, 4))], (4, 4), r"maps\[0\]"),
        ([(torch.rand(1, 2, 16, 1), (4, 4)), (torch.rand(2, 2, 4, 1), (2, 2))], (4, 4), "batch"),
        ([(torch.rand(1, 2, 16, 1), (4, 4))], (0, 4), "out_hw"),
    ],
)
def test_aggregate_bad_input(maps, out_hw, match):
    with pytest.raises(ValueError, match=match):
        aggregate_attention(maps, out_hw)


def test_soft_threshold_and_prior():
    a = torch.tensor([0.0, 0.35, 0.45, 0.55, 1.0]).view(1, 1, 1, 5)
    torch.testing.assert_close(soft_threshold(a, 0.35, 0.2).flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="width"):
        soft_threshold(a, 0.3, 0.0)
    z = torch.tensor([1.0, -1.0, 0.5, 0.0]).view(1, 4, 1, 1)
    x0 = z.expand(1, 4, 2, 2).clone()
    x0[..., 0, 0] += torch.tensor([2.0, 0, 0, 0])  # distance 2 at pixel (0, 0)
    p = x0_prior(x0, z, 2.0)
    assert p.shape == (1, 1, 2, 2)
    assert p[0, 0, 0, 0] == pytest.approx(torch.exp(torch.tensor(-1.0)).item())
    assert p[0, 0, 1, 1] == pytest.approx(1.0)
    m = background_mask(torch.ones(1, 1, 2, 2), x0=x0, z_green=z, prior_scale=2.0)
    torch.testing.assert_close(m, p)
    with pytest.raises(ValueError, match="x0"):
        background_mask(torch.ones(1, 1, 2, 2), prior_scale=1.0)


def test_normalize_per_image_range():
    x = torch.randn(3, 1, 5, 5) * 10
    n = normalize_per_image(x)
    torch.testing.assert_close(n.flatten(1).amin(1), torch.zeros(3))
    torch.testing.assert_close(n.flatten(1).amax(1), torch.ones(3))
