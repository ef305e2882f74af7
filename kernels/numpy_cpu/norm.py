"""Normalisation kernels, written against `xp`: statistics, normalise, and the normalisation's
backward over a (p, q, r) view reduced over axes 0 and 2. The four norms differ only in the view:
batch norm (n, c, spatial), instance norm (1, n*c, spatial), group norm (1, n*g, c/g*spatial),
layer norm (1, leading, trailing)."""

from __future__ import annotations


def norm_moments(x):
    """x (p, q, r) float -> (mean (q,), var (q,)) in x's dtype: the mean and the BIASED variance
    (divided by p*r) of x[:, j, :] for each j. Computed in two passes here (the reference); fast
    flavours may use one pass with a shift, which agrees within rounding."""
    mean = x.mean(axis=(0, 2))
    d = x - mean[:, None]
    return mean, (d * d).mean(axis=(0, 2))


def norm_forward(x, mean, rstd, weight, bias):
    """x (p, q, r), mean/rstd (q,), weight/bias (q,) or None -> y (p, q, r), x's dtype:
    y[i, j, k] = (x[i, j, k] - mean[j]) * rstd[j] * weight[j] + bias[j] (weight None: 1, bias
    None: 0). rstd = 1 / sqrt(var + eps), computed by the caller; batch norm's eval mode passes
    the running statistics here."""
    scale = rstd if weight is None else rstd * weight
    y = (x - mean[:, None]) * scale[:, None]
    return y if bias is None else y + bias[:, None]


def norm_backward(gy, x, mean, rstd, weight):
    """gy, x (p, q, r), mean/rstd (q,) the statistics OF THIS x (training mode), weight (q,) or
    None -> (gx (p, q, r), gweight (q,), gbias (q,)), x's dtype. With xhat = (x - mean) rstd and
    N = p*r: gbias[j] = sum gy[:, j, :], gweight[j] = sum (gy xhat)[:, j, :] and
    gx = weight rstd (gy - gbias / N - xhat gweight / N), the mean and variance differentiated too."""
    xhat = (x - mean[:, None]) * rstd[:, None]
    gbias = gy.sum(axis=(0, 2))
    gweight = (gy * xhat).sum(axis=(0, 2))
    count = x.shape[0] * x.shape[2]
    scale = rstd if weight is None else rstd * weight
    gx = scale[:, None] * (gy - gbias[:, None] / count - xhat * (gweight[:, None] / count))
    return gx.astype(x.dtype, copy=False), gweight, gbias
