"""Standard alpha-matting metrics (whole image): SAD, MSE, Grad, Conn (Rhemann et al. 2009 definitions).

SAD and Grad are reported divided by 1000, MSE as is, Conn divided by 1000 (the usual table units)."""

from __future__ import annotations

import numpy as np
import torch


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[-2], x.shape[-1])


def sad(pred, gt) -> float:
    """pred, gt: [...,H,W] in [0,1] -> sum |pred - gt| / 1000."""
    return float(np.abs(_np(pred) - _np(gt)).sum() / 1000)


def mse(pred, gt) -> float:
    """pred, gt: [...,H,W] in [0,1] -> mean squared error."""
    return float(((_np(pred) - _np(gt)) ** 2).mean())


def grad(pred, gt, sigma: float = 1.4) -> float:
    """Gradient error: sum (|grad_sigma pred| - |grad_sigma gt|)^2 / 1000 with Gaussian-derivative filters."""
    from scipy.ndimage import gaussian_filter

    def mag(a):
        gx = gaussian_filter(a, sigma, order=(0, 1))
        gy = gaussian_filter(a, sigma, order=(1, 0))
        return np.sqrt(gx ** 2 + gy ** 2)

    p, g = _np(pred), _np(gt)
    return float(((mag(p) - mag(g)) ** 2).sum() / 1000)


def conn(pred, gt, step: float = 0.1) -> float:
    """Connectivity error: sum |phi(pred) - phi(gt)| / 1000 (phi from the largest common component per threshold)."""
    from scipy.ndimage import label

    p, g = _np(pred), _np(gt)
    thresholds = np.arange(0, 1 + step, step)
    l_map = np.full(p.shape, -1.0)
    for i in range(1, len(thresholds)):
        both = (p >= thresholds[i]) & (g >= thresholds[i])
        lab, n = label(both, structure=np.ones((3, 3)))
        if n == 0:
            omega = np.zeros_like(both)
        else:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            omega = lab == sizes.argmax()
        flag = (l_map == -1) & ~omega
        l_map[flag] = thresholds[i - 1]
    l_map[l_map == -1] = 1
    dp, dg = p - l_map, g - l_map
    phi_p = 1 - dp * (dp >= 0.15)
    phi_g = 1 - dg * (dg >= 0.15)
    return float(np.abs(phi_p - phi_g).sum() / 1000)


def all_metrics(pred, gt) -> dict[str, float]:
    """pred, gt: [...,H,W] in [0,1] -> {"SAD", "MSE", "Grad", "Conn"}."""
    return {"SAD": sad(pred, gt), "MSE": mse(pred, gt), "Grad": grad(pred, gt), "Conn": conn(pred, gt)}
