"""Standard alpha-matting error measures (Rhemann et al., CVPR 2009), one function per metric.

All inputs are numpy arrays of the same shape, alpha in [0, 1] (1 = opaque); every measure is taken over the whole
image (no trimap). Scales follow the common convention (Deep Image Matting): SAD / 1000, MSE x 1000,
Grad / 1000, Conn / 1000, premultiplied-foreground MSE x 1000. Shared by bench/keying.py and the matting-head
benchmark.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def sad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Sum of absolute differences / 1000."""
    return float(np.abs(pred.astype(np.float64) - gt).sum() / 1000.0)


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error x 1000."""
    return float(np.mean((pred.astype(np.float64) - gt) ** 2) * 1000.0)


def _derivative_of_gaussian(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """First-order Gaussian derivative kernels (x, y), each scaled to unit L2 norm."""
    half = int(math.ceil(3.0 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    dg = -x / sigma**2 * g
    kx = np.outer(g, dg)
    kx /= np.sqrt((kx**2).sum())
    return kx, kx.T


def gradient_magnitude(a: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    """|grad a| with Gaussian-derivative filters of the given sigma (replicate border)."""
    kx, ky = _derivative_of_gaussian(sigma)
    a = a.astype(np.float64)
    return np.hypot(ndimage.correlate(a, kx, mode="nearest"), ndimage.correlate(a, ky, mode="nearest"))


def gradient_error(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.4) -> float:
    """Sum of squared differences of the gradient magnitudes / 1000."""
    return float(((gradient_magnitude(pred, sigma) - gradient_magnitude(gt, sigma)) ** 2).sum() / 1000.0)


def connectivity_error(pred: np.ndarray, gt: np.ndarray, step: float = 0.1, theta: float = 0.15) -> float:
    """Connectivity error / 1000: how much each pixel's alpha stays connected to the main opaque body.

    For thresholds t = step, 2 step, ..., 1 the largest 4-connected component of ``pred >= t & gt >= t`` is found;
    a pixel's level ``l`` is the last threshold at which it was still in it; ``phi(x) = 1 - (x - l)`` where
    ``x - l >= theta``, else 1; the error is ``sum |phi(pred) - phi(gt)|``.
    """
    pred = pred.astype(np.float64)
    gt = gt.astype(np.float64)
    level = np.ones(pred.shape)
    assigned = np.zeros(pred.shape, bool)
    structure = ndimage.generate_binary_structure(2, 1)
    thresholds = np.arange(step, 1.0 + 1e-9, step)
    previous = 0.0
    for t in thresholds:
        both = (pred >= t) & (gt >= t)
        labels, n = ndimage.label(both, structure=structure)
        if n:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            main = labels == int(sizes.argmax())
        else:
            main = np.zeros(pred.shape, bool)
        lost = ~main & ~assigned
        level[lost] = previous
        assigned |= lost
        previous = t
    dp, dg = pred - level, gt - level
    phi_p = 1.0 - dp * (dp >= theta)
    phi_g = 1.0 - dg * (dg >= theta)
    return float(np.abs(phi_p - phi_g).sum() / 1000.0)


def foreground_error(pred_alpha: np.ndarray, pred_fg: np.ndarray, gt_alpha: np.ndarray, gt_fg: np.ndarray) -> float:
    """MSE of the premultiplied foreground (alpha x colour, HxWx3) x 1000."""
    p = pred_alpha[..., None].astype(np.float64) * pred_fg
    g = gt_alpha[..., None].astype(np.float64) * gt_fg
    return float(np.mean((p - g) ** 2) * 1000.0)


def all_metrics(pred_alpha: np.ndarray, gt_alpha: np.ndarray, pred_fg: np.ndarray | None = None,
                gt_fg: np.ndarray | None = None) -> dict[str, float]:
    """SAD, MSE, Grad, Conn (+ FgMSE when both foregrounds are given) as a dict."""
    out = {
        "SAD": sad(pred_alpha, gt_alpha),
        "MSE": mse(pred_alpha, gt_alpha),
        "Grad": gradient_error(pred_alpha, gt_alpha),
        "Conn": connectivity_error(pred_alpha, gt_alpha),
    }
    if pred_fg is not None and gt_fg is not None:
        out["FgMSE"] = foreground_error(pred_alpha, pred_fg, gt_alpha, gt_fg)
    return out
