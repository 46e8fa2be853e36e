"""Unit tests of the trainer's losses and latent-size masks against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from diffumatting.trainer.losses import (
    LossWeights,
    abar_from_sigma,
    attention_green_loss,
    background_mask,
    canvas_green_loss,
    diffusion_loss,
    joint_loss,
    transition_band,
    transition_boundary_loss,
)

EPS_HAT = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1,1,2,2]


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_diffusion_loss_hand_value():
    assert diffusion_loss(torch.zeros(1, 1, 2, 2), EPS_HAT).item() == pytest.approx(7.5)  # (1+4+9+16)/4


def test_diffusion_loss_shape_mismatch():
    with pytest.raises(ValueError, match="eps/eps_hat"):
        diffusion_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))


def test_attention_loss_hand_value_and_validity():
    a = t([[[[0.2, 0.8], [1.0, 0.0]]]])
    bg = t([[[[0.0, 1.0], [1.0, 0.0]]]])
    assert attention_green_loss(a, bg).item() == pytest.approx(0.02)  # (0.04 + 0.04) / 4
    a2 = torch.cat([a, torch.ones_like(a)])
    bg2 = torch.cat([bg, torch.zeros_like(bg)])  # second sample: loss 1
    assert attention_green_loss(a2, bg2).item() == pytest.approx(0.51)
    assert attention_green_loss(a2, bg2, torch.tensor([True, False])).item() == pytest.approx(0.02)
    none = attention_green_loss(a2, bg2, torch.tensor([False, False]))
    assert none.item() == 0.0


@pytest.mark.parametrize("fill,expected", [(0.0, 1.0), (1.0, 0.0)])
def test_attention_loss_all_zero_all_one_masks(fill, expected):
    a = torch.ones(2, 1, 4, 4)
    assert attention_green_loss(a, torch.full_like(a, fill)).item() == pytest.approx(expected)


def test_attention_loss_bad_shapes():
    with pytest.raises(ValueError, match="bg"):
        attention_green_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="valid"):
        attention_green_loss(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([True]))


X0 = t([[[[3.0, 5.0]], [[1.0, 7.0]]]])  # [1,2,1,2]: channel 0 = [3,5], channel 1 = [1,7]
ZG = t([1.0, 0.0]).view(1, 2, 1, 1)


def test_canvas_loss_hand_values():
    bg = t([[[[1.0, 0.0]]]])
    # pixel 0 only: ((3-1)^2 + (1-0)^2) * 0.5 / (C=2 * sum(B)=1) = 1.25
    assert canvas_green_loss(X0, ZG, bg, t([0.5])).item() == pytest.approx(1.25)
    # all-one mask: (4 + 1 + 16 + 49) * 0.5 / (2 * 2) = 8.75
    assert canvas_green_loss(X0, ZG, torch.ones_like(bg), t([0.5])).item() == pytest.approx(8.75)


def test_canvas_loss_all_zero_mask_is_zero_with_finite_grad():
    x0 = X0.clone().requires_grad_(True)
    loss = canvas_green_loss(x0, ZG, torch.zeros(1, 1, 1, 2), t([0.5]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(x0.grad).all() and (x0.grad == 0).all()


def test_canvas_loss_bad_inputs():
    with pytest.raises(ValueError, match="z_green"):
        canvas_green_loss(X0, torch.zeros(3), torch.ones(1, 1, 1, 2), t([1.0]))
    with pytest.raises(ValueError, match="abar"):
        canvas_green_loss(X0, ZG, torch.ones(1, 1, 1, 2), t([1.0, 1.0]))


def test_transition_boundary_loss_hand_values():
    eps = torch.zeros(1, 1, 2, 2)
    band = t([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert transition_boundary_loss(eps, EPS_HAT, band).item() == pytest.approx(8.5)  # (1 + 16) / 2
    assert transition_boundary_loss(eps, EPS_HAT, torch.ones_like(band)).item() == pytest.approx(7.5)
    eh = EPS_HAT.clone().requires_grad_(True)
    zero = transition_boundary_loss(eps, eh, torch.zeros_like(band))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(eh.grad).all()


def test_joint_loss_weighted_sum():
    eps = torch.zeros(1, 2, 1, 2)
    eps_hat = t([[[[1.0, 1.0]], [[1.0, 3.0]]]])  # ldm = (1+1+1+9)/4 = 3
    bg = t([[[[1.0, 0.0]]]])
    band = t([[[[0.0, 1.0]]]])  # tb = (1 + 9) / 2 = 5
    a_g = t([[[[0.5, 0.5]]]])  # attn = (0.25 + 0.25) / 2 = 0.25
    w = LossWeights(green=0.5, attn=2.0, canvas=1.0, tb=3.0)
    out = joint_loss(eps, eps_hat, X0, ZG, bg, band, t([0.5]), a_g=a_g, weights=w)
    assert out["ldm"].item() == pytest.approx(3.0)
    assert out["attn"].item() == pytest.approx(0.25)
    assert out["canvas"].item() == pytest.approx(1.25)
    assert out["tb"].item() == pytest.approx(5.0)
    assert out["green"].item() == pytest.approx(2 * 0.25 + 1.25)
    assert out["loss"].item() == pytest.approx(3.0 + 0.5 * 1.75 + 3 * 5.0)
    no_attn = joint_loss(eps, eps_hat, X0, ZG, bg, band, t([0.5]), a_g=None, weights=w)
    assert no_attn["attn"].item() == 0.0


@pytest.mark.parametrize("kw", [{"green": -1.0}, {"tb": float("nan")}, {"attn": float("inf")}])
def test_loss_weights_validation(kw):
    with pytest.raises(ValueError, match="loss weight"):
        LossWeights(**kw)


def test_abar_from_sigma():
    assert torch.allclose(abar_from_sigma(t([0.0, 1.0, 3.0])), t([1.0, 0.5, 0.1]))


def test_background_mask_hand_values():
    alpha = torch.zeros(1, 1, 16, 16)
    alpha[0, 0, 3, 3] = 0.5
    assert torch.equal(background_mask(alpha), t([[[[0.0, 1.0], [1.0, 1.0]]]]))
    alpha[0, 0, 3, 3] = 0.005  # below the 0.01 threshold: still background
    assert background_mask(alpha).min().item() == 1.0
    assert background_mask(torch.zeros(2, 1, 16, 16)).eq(1).all()
    assert background_mask(torch.ones(2, 1, 16, 16)).eq(0).all()


def test_transition_band_hand_values():
    alpha = torch.zeros(1, 1, 16, 16)
    alpha[0, 0, 3, 3] = 0.5
    assert torch.equal(transition_band(alpha, radius=0), t([[[[1.0, 0.0], [0.0, 0.0]]]]))
    # dilation by 5 px reaches rows/cols 8: all four 8x8 patches
    assert transition_band(alpha, radius=5).eq(1).all()
    assert transition_band(alpha, radius=4).sum().item() == 1.0
    # a hard (binary) edge counts too: opaque left half -> edge at columns 15|16 (patches 1 and 2)
    hard = torch.zeros(1, 1, 16, 32)
    hard[..., :16] = 1.0
    band = transition_band(hard, radius=0)
    assert torch.equal(band[0, 0, 0], t([0.0, 1.0, 1.0, 0.0]))


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_transition_band_all_zero_all_one(fill):
    assert transition_band(torch.full((1, 1, 16, 16), fill), radius=3).eq(0).all()


def test_mask_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        background_mask(torch.zeros(1, 1, 12, 16))
    with pytest.raises(ValueError, match="alpha"):
        transition_band(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="radius"):
        transition_band(torch.zeros(1, 1, 16, 16), radius=-1)
