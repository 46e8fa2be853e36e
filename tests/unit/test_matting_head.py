"""Matting head core: TAESD-family builder, decoder taps, the network, decode (tiled vs untiled), keyer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffumatting.matting_head.decode import count_tiles, decode_with_head
from diffumatting.matting_head.keyer import colour_difference_alpha, estimate_key
from diffumatting.matting_head.network import MattingHead, count_parameters
from diffumatting.matting_head.taesd import (build_decoder, build_encoder, load_tiny_autoencoder,
                                             random_tiny_autoencoder)
from diffumatting.matting_head.taps import TapRecorder, tap_spec

SMALL = {"lateral": [8, 8, 8, 8], "width_8": 8, "width_16": 8, "width_32": 8, "width_4": 8, "width_2": 8,
         "width_1": 8}


class FakeResBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.out_channels = c_out
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class FakeKLDecoder(nn.Module):
    """Same control flow and module layout as ComfyUI's AutoencoderKL Decoder (up[3] runs first)."""

    def __init__(self, ch=(8, 16, 16, 16), z=4):
        super().__init__()
        self.conv_in = nn.Conv2d(z, ch[3], 3, padding=1)
        self.up = nn.ModuleList()
        for i in range(4):
            lvl = nn.Module()
            c_in = ch[min(i + 1, 3)]
            lvl.block = nn.ModuleList([FakeResBlock(c_in, ch[i]), FakeResBlock(ch[i], ch[i])])
            lvl.upsample = nn.Upsample(scale_factor=2) if i > 0 else nn.Identity()
            self.up.append(lvl)
        self.conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for i in reversed(range(4)):
            for b in self.up[i].block:
                h = b(h)
            h = self.up[i].upsample(h)
        return torch.sigmoid(self.conv_out(h))


def test_taef2_builds_from_its_keys_and_reconstructs(taef2_dir):
    ae = load_tiny_autoencoder(taef2_dir)
    assert ae.latent_channels == 32
    assert sum(isinstance(getattr(m, "pool", None), nn.Sequential) for m in ae.decoder) == 3
    assert sum(isinstance(getattr(m, "pool", None), nn.Sequential) for m in ae.encoder) == 3
    spec = tap_spec(ae.decoder)
    assert spec.family == "taesd" and spec.names == ["5", "10", "15", "18"] and spec.channels == [64] * 4
    # A smooth test image survives the round trip (a wrong architecture gives garbage, PSNR < 15 dB).
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    img = torch.stack([xx, yy, 0.5 * (1 - xx) + 0.25])[None]
    with torch.no_grad():
        rec = ae.decode(ae.encode(img))
    psnr = 10 * torch.log10(1 / torch.mean((rec - img) ** 2))
    assert psnr > 25, f"TAEF2 round trip PSNR {psnr:.1f} dB"


def test_builder_rejects_foreign_state_dicts():
    with pytest.raises(ValueError, match="unexpected key"):
        build_decoder({"decoder.conv.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(ValueError, match="empty"):
        build_encoder({})
    with pytest.raises(ValueError, match="not a TAESD-family decoder"):
        build_decoder({"1.weight": torch.zeros(8, 4, 3, 3), "1.bias": torch.zeros(8)})


def test_load_tiny_autoencoder_errors(tmp_path):
    with pytest.raises(ValueError, match="no \\*_decoder"):
        load_tiny_autoencoder(tmp_path)
    bad = tmp_path / "x_decoder.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_tiny_autoencoder(tmp_path)


def test_taps_taesd_fire_coarse_to_fine():
    ae = random_tiny_autoencoder(4, 8, pool=True)
    spec = tap_spec(ae)
    z = torch.randn(2, 4, 5, 7)
    with TapRecorder(spec.modules) as rec:
        ae.decode(z)
        ae.decode(z[:1])
    taps = rec.take()
    assert [tuple(t.shape) for t in taps] == [(3, 8, 5 * s, 7 * s) for s in (1, 2, 4, 8)]
    # hooks are removed on exit
    ae.decode(z)
    assert all(len(o) == 0 for o in rec.outputs)


def test_taps_autoencoderkl_layout():
    dec = FakeKLDecoder()
    holder = nn.Module()
    holder.decoder = dec
    spec = tap_spec(holder)
    assert spec.family == "autoencoderkl" and spec.latent_channels == 4
    assert spec.names == ["up.3.block.1", "up.2.block.1", "up.1.block.1", "up.0.block.1"]
    assert spec.channels == [16, 16, 16, 8]
    with TapRecorder(spec.modules) as rec:
        dec(torch.randn(1, 4, 4, 6))
    shapes = [tuple(t.shape[-2:]) for t in rec.take()]
    assert shapes == [(4, 6), (8, 12), (16, 24), (32, 48)]


def test_taps_transform_runs_inside_hook_and_missing_tap_is_reported():
    ae = random_tiny_autoencoder(4, 8)
    spec = tap_spec(ae.decoder)
    with TapRecorder(spec.modules, [lambda t: t[:, :2]] * 4) as rec:
        ae.decode(torch.randn(1, 4, 4, 4))
    assert all(t.shape[1] == 2 for t in rec.take())
    with pytest.raises(RuntimeError, match="did not fire"):
        rec.take()


def test_tap_spec_rejects_other_modules():
    with pytest.raises(ValueError, match="not a supported decoder"):
        tap_spec(nn.Linear(3, 3))


def test_fingerprint_tells_decoders_apart():
    a, b = random_tiny_autoencoder(4, 8, seed=1), random_tiny_autoencoder(4, 8, seed=2)
    assert tap_spec(a).fingerprint != tap_spec(b).fingerprint
    assert tap_spec(a).fingerprint == tap_spec(random_tiny_autoencoder(4, 8, seed=1)).fingerprint


def test_head_shapes_ranges_and_default_size():
    assert 1_000_000 <= count_parameters(MattingHead([64] * 4)) <= 3_500_000
    head = MattingHead([8] * 4, SMALL)
    taps = [torch.randn(2, 8, 40 // s, 56 // s) for s in (8, 4, 2, 1)]
    out = head(taps, torch.rand(2, 3, 40, 56), torch.rand(2, 1, 40, 56))
    assert out["alpha"].shape == (2, 1, 40, 56) and out["fg"].shape == (2, 3, 40, 56)
    assert 0 <= out["alpha"].min() and out["alpha"].max() <= 1 and torch.isfinite(out["logits"]).all()


def test_untrained_head_returns_the_key_alpha():
    """The last layer starts at zero, so a fresh head outputs its keyer prior (up to the logit clamp)."""
    head = MattingHead([8] * 4, SMALL)
    ka = torch.rand(1, 1, 16, 16) * 0.98 + 0.01
    out = head([torch.randn(1, 8, 16 // s, 16 // s) for s in (8, 4, 2, 1)], torch.rand(1, 3, 16, 16), ka)
    assert torch.allclose(out["alpha"], ka, atol=1e-4)


def test_head_rejects_wrong_tap_count():
    with pytest.raises(ValueError, match="4 taps"):
        MattingHead([8, 8, 8])
    head = MattingHead([8] * 4, SMALL)
    with pytest.raises(ValueError, match="4 feature maps"):
        head([torch.randn(1, 8, 2, 2)], torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16))


def _trained_like_head(seed=0):
    torch.manual_seed(seed)
    head = MattingHead([8] * 4, SMALL).eval()
    for p in head.parameters():  # make the correction non-trivial
        p.data.add_(torch.randn_like(p) * 0.05)
    return head


def test_decode_with_head_untiled_matches_manual_pipeline():
    ae = random_tiny_autoencoder(4, 8, seed=3)
    spec = tap_spec(ae.decoder)
    head = _trained_like_head()
    z = torch.randn(2, 4, 6, 5)
    key = torch.tensor([0.0, 1.0, 0.0])
    with torch.no_grad():
        out = decode_with_head(ae.decode, spec, head, z, key=key)
        with TapRecorder(spec.modules) as rec:
            rgb = ae.decode(z)
        ref = head(rec.take(), rgb, colour_difference_alpha(rgb, key))
    assert torch.allclose(out["alpha"], ref["alpha"], atol=1e-5)
    assert torch.allclose(out["image"], rgb, atol=1e-6)
    for k in ("image", "alpha", "fg"):
        assert out[k].min() >= 0 and out[k].max() <= 1


def test_tiled_decode_matches_untiled_within_tolerance():
    """Tiles are blended over the overlap; with a wide overlap the seams stay small (stated tolerance)."""
    ae = random_tiny_autoencoder(4, 8, seed=4)
    spec = tap_spec(ae.decoder)
    head = _trained_like_head(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 48), indexing="ij")
    z = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy, xx])[None] * 2
    key = torch.tensor([0.0, 1.0, 0.0])
    with torch.no_grad():
        full = decode_with_head(ae.decode, spec, head, z, key=key)
        tiled = decode_with_head(ae.decode, spec, head, z, key=key, tile=24, overlap=12)
    assert count_tiles(40, 48, 24, 12) > 1
    for k in ("image", "alpha"):
        diff = (full[k] - tiled[k]).abs()
        assert diff.mean() < 0.01 and diff.max() < 0.1, (k, diff.mean().item(), diff.max().item())


def test_decode_errors():
    ae = random_tiny_autoencoder(4, 8)
    spec = tap_spec(ae.decoder)
    head = MattingHead([8] * 4, SMALL)
    with pytest.raises(ValueError, match="4-channel"):
        decode_with_head(ae.decode, spec, head, torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match="overlap"):
        decode_with_head(ae.decode, spec, head, torch.randn(1, 4, 20, 20), tile=8, overlap=8)


def test_keyer_on_known_screen():
    img = torch.zeros(1, 3, 32, 32)
    img[:, 1] = 1.0
    img[:, :, 8:24, 8:24] = torch.tensor([0.8, 0.2, 0.3])[:, None, None]
    grey = torch.tensor([0.4, 0.4, 0.4])[:, None, None]  # d(grey) = 0: a 50 % mix is half way in d
    img[:, :, 8:24, 4:8] = 0.5 * grey + 0.5 * torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    key = estimate_key(img)
    assert len(key) == 1 and key[0].source == "estimated"
    assert torch.allclose(key[0].tensor(), torch.tensor([0.0, 1.0, 0.0]))
    a = colour_difference_alpha(img, key)
    assert a[0, 0, 0, 0] == 0 and a[0, 0, 16, 16] == 1
    assert 0.4 < a[0, 0, 16, 5] < 0.6
    with pytest.raises(ValueError, match="image"):
        colour_difference_alpha(torch.rand(1, 4, 8, 8), key)


def test_inference_path_equals_training_path():
    """The in-place, memory-saving forward used without autograd gives the same result as the training forward."""
    head = _trained_like_head(2)
    taps = [torch.randn(1, 8, 32 // s, 24 // s) for s in (8, 4, 2, 1)]
    rgb, ka = torch.rand(1, 3, 32, 24), torch.rand(1, 1, 32, 24)
    with torch.enable_grad():
        a = head(list(taps), rgb, ka)
    with torch.no_grad():
        b = head(list(taps), rgb, ka)
    assert torch.equal(a["alpha"].detach(), b["alpha"]) and torch.equal(a["fg"].detach(), b["fg"])
    assert taps[3] is not None  # the caller's own list is untouched


def test_greenpost_prior_head_starts_as_greenpost_and_is_used_by_decode():
    """A head configured with prior="greenpost" corrects GreenPost's alpha of the decoded image: untrained, it returns
    that alpha (up to the logit clamp); decode_with_head feeds it the same prior with the given key."""
    from diffumatting.greenpost import green_post
    from diffumatting.matting_head.keyer import prior_alpha

    ae = random_tiny_autoencoder(4, 8, seed=3)
    spec = tap_spec(ae.decoder)
    head = MattingHead([8] * 4, {**SMALL, "prior": "greenpost"}).eval()
    z = torch.randn(1, 4, 8, 8)
    key = torch.tensor([0.1, 0.8, 0.2])
    with torch.no_grad():
        out = decode_with_head(ae.decode, spec, head, z, key=key)
        rgb = ae.decode(z)
    gp = green_post(rgb, key_colour=key[None]).alpha  # GreenPost on the decoded image, as a user would run it
    from diffumatting.matting_head.network import LOGIT_CLAMP

    # the guarantee: an untrained greenpost-prior head returns GreenPost's alpha, exactly where it is not near 0 or 1
    # and within the logit clamp's margin (sigmoid(-LOGIT_CLAMP)) where it is
    margin = float(torch.sigmoid(torch.tensor(-float(LOGIT_CLAMP))))
    inner = (gp > 2 * margin) & (gp < 1 - 2 * margin)
    assert inner.any() and (out["alpha"] - gp)[inner].abs().max() < 1e-4
    assert (out["alpha"] - gp).abs().max() <= margin + 1e-3
    assert not torch.allclose(gp, colour_difference_alpha(rgb, key), atol=1e-3)  # a different prior indeed
    with pytest.raises(ValueError, match="prior: expected one of"):
        prior_alpha(rgb, key, "magic")


def test_strip_wise_full_resolution_stage_equals_whole_image(monkeypatch):
    """Inference computes the full-resolution stage in row strips (memory); the result equals the whole-image
    computation, also where a strip boundary falls on an odd row and for sizes that are not an exact 2x."""
    from diffumatting.matting_head import network

    head = _trained_like_head(5)
    for h, w in ((64, 40), (72, 48)):
        taps = [torch.randn(1, 8, h // s, w // s) for s in (8, 4, 2, 1)]
        rgb, ka = torch.rand(1, 3, h, w), torch.rand(1, 1, h, w)
        with torch.no_grad():
            monkeypatch.setattr(network, "INFER_STRIP", 4096)
            whole = head(list(taps), rgb, ka)
            for strip in (8, 13):
                monkeypatch.setattr(network, "INFER_STRIP", strip)
                part = head(list(taps), rgb, ka)
                assert torch.allclose(part["alpha"], whole["alpha"], atol=1e-6), (h, w, strip)
                assert torch.allclose(part["fg"], whole["fg"], atol=1e-6)
