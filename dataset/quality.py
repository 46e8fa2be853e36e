"""The data factory's quality gate: scores per sample and the rule that rejects bad ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..common.keycolour import MIN_KEY_DOMINANCE, key_channels, key_difference, key_dominance, key_rgb


@dataclass
class QualityThresholds:
    """Limits of the gate (fractions in [0,1]). Defaults suit 512 px green-screen generations."""

    max_key_residue: float = 0.01  # share of the object (alpha-weighted) whose fg colour is still the key colour
    key_similarity: float = 0.5  # an fg pixel counts as key colour when its colour difference against the key is at
    # least this share of the key's own (``common.keycolour.key_difference``: G - max(R, B) for a green key)
    max_border_alpha: float = 0.02  # share of the image border (``border`` px wide) covered by the object
    border: int = 2
    min_coverage: float = 0.01  # mean alpha: below this the sample is (almost) empty
    max_coverage: float = 0.90  # above this the object fills the frame (no usable background)

    def checked(self) -> "QualityThresholds":
        """-> self; ``ValueError`` naming the field if a fraction is not in [0, 1] (or NaN), ``border`` is not a
        whole number >= 1, or ``min_coverage`` exceeds ``max_coverage``."""
        for name in ("max_key_residue", "key_similarity", "max_border_alpha", "min_coverage", "max_coverage"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {value!r}")
        if isinstance(self.border, bool) or not isinstance(self.border, int) or not 1 <= self.border <= 4096:
            raise ValueError(f"border: expected a whole number of pixels in 1..4096, got {self.border!r}")
        if self.min_coverage > self.max_coverage:
            raise ValueError(f"min_coverage ({self.min_coverage}) must not exceed max_coverage ({self.max_coverage}): "
                             "every sample would be rejected")
        return self


def quality_scores(fg: torch.Tensor, alpha: torch.Tensor, key_colour,
                   thresholds: QualityThresholds | None = None) -> list[dict[str, float]]:
    """fg [B,3,H,W] straight, alpha [B,1,H,W] (1 = opaque), key_colour: a KeyColour, 1 or B of them, or a [3]/[B,3]
    tensor in [0,1] (``common.keycolour.key_rgb``) -> one score dict per sample.

    Scores: ``key_residue`` (alpha-weighted share of object pixels whose colour difference against the key,
    :func:`common.keycolour.key_difference`, is at least ``key_similarity`` of the key's own), ``border_alpha`` (share of the ``border``-px frame with alpha > 0.5), ``coverage`` (mean alpha).
    """
    t = thresholds or QualityThresholds()
    if fg.ndim != 4 or fg.shape[1] != 3:
        raise ValueError(f"fg: expected [B,3,H,W], got {tuple(fg.shape)}")
    if alpha.ndim != 4 or alpha.shape[1] != 1 or alpha.shape[0] != fg.shape[0] or alpha.shape[-2:] != fg.shape[-2:]:
        raise ValueError(f"alpha: expected [B,1,H,W] matching fg {tuple(fg.shape)}, got {tuple(alpha.shape)}")
    b, _, h, w = fg.shape
    key = key_rgb(key_colour, b, fg.device)
    a = alpha.float().clamp(0, 1)
    # Pixels with almost no alpha carry no visible colour; weight by alpha so only visible residue counts.
    weight = a * (a > 0.05)
    # Key colour left in the fg: its colour difference against the key is a good share of the key's own. A key too
    # close to grey to key against (all opaque) has no residue to speak of.
    dominance = key_dominance(key)
    usable = (dominance >= MIN_KEY_DOMINANCE).float()[:, None, None, None]
    diff = key_difference(fg.float(), key_channels(key))
    near_key = (diff >= (t.key_similarity * dominance)[:, None, None, None]).float() * usable
    residue = (weight * near_key).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    r = max(1, min(t.border, h // 2, w // 2))
    frame = torch.ones(h, w, dtype=torch.bool, device=fg.device)
    frame[r:-r, r:-r] = False
    border = (a[:, 0][:, frame] > 0.5).float().mean(dim=1)
    coverage = a.mean(dim=(1, 2, 3))
    return [
        {"key_residue": float(residue[i]), "border_alpha": float(border[i]), "coverage": float(coverage[i])}
        for i in range(b)
    ]


def gate(scores: dict[str, float], thresholds: QualityThresholds | None = None) -> list[str]:
    """Reasons to reject one sample (empty list = accepted). Reason codes: key_residue, border, empty, full."""
    t = thresholds or QualityThresholds()
    reasons = []
    if scores["key_residue"] > t.max_key_residue:
        reasons.append("key_residue")
    if scores["border_alpha"] > t.max_border_alpha:
        reasons.append("border")
    if scores["coverage"] < t.min_coverage:
        reasons.append("empty")
    if scores["coverage"] > t.max_coverage:
        reasons.append("full")
    return reasons


def thresholds_dict(t: QualityThresholds) -> dict:
    return asdict(t)
