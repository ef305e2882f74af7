"""Segmentation losses on (n, k, *spatial) logits, as MONAI's: soft Dice, Dice + cross-entropy,
focal loss. Dice is composed from differentiable ops; the focal terms are two Functions.
"""

from __future__ import annotations

import numpy as np

from engine.backend import get_backend
from engine.errors import ArgumentError
from engine.function import Function
from engine.ops.elementwise import sigmoid, stable_sigmoid
from engine.ops.loss import (
    binary_cross_entropy_with_logits,
    softmax,
    softmax_cross_entropy,
)
from engine.ops.reduce import mean
from engine.ops.reduce import sum as sum_
from engine.tensor import Tensor, as_tensor

_REDUCTIONS = ("mean", "sum", "none")


def _softplus(xp, x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


class SigmoidFocalFn(Function):
    """Elementwise focal term on logits z and targets t in [0, 1], both (n, k, *spatial):
    y = bce(z, t) * sigmoid(-z (2t - 1))^gamma, bce = softplus(z) - z t (MONAI's
    sigmoid_focal_loss; for t in {0, 1} the factor is (1 - p_t)^gamma, as torchvision's).

    Stable for logits of any magnitude (logs of sigmoids via softplus). t gets no gradient.
    """

    def forward(self, z, t, *, gamma):
        xp = self.xp
        self.z, self.t, self.gamma = z, t, gamma  # the gradient needs z, t and both factors
        self.s = 2 * t - 1  # +1 where the target is 1, -1 where it is 0
        self.bce = _softplus(xp, z) - z * t
        # sigmoid(-z s)^gamma = exp(-gamma softplus(z s)): no overflow, no 0^gamma
        self.m = xp.exp(-gamma * _softplus(xp, z * self.s))
        return self.bce * self.m

    def backward(self, gy):
        # y = bce m with d bce/dz = sigmoid(z) - t and d m/dz = -gamma s sigmoid(z s) m, so
        # dy/dz = m [(sigmoid(z) - t) - gamma s sigmoid(z s) bce]
        xp = self.xp
        sig_zs = stable_sigmoid(xp, self.z * self.s)
        inner = stable_sigmoid(xp, self.z) - self.t - self.gamma * self.s * sig_zs * self.bce
        return gy * self.m * inner, None


class SoftmaxFocalFn(Function):
    """Focal term of the softmax over the class axis 1: z, t (n, k, *spatial) ->
    y = -t (1 - p)^gamma log p with log p = log_softmax(z, axis=1) (MONAI's softmax_focal_loss).

    1 - p is computed as -expm1(log p), so it keeps its digits when p is near 1; at p = 1 the
    term and its gradient are 0 for every gamma >= 0. t gets no gradient.
    """

    def forward(self, z, t, *, gamma):
        xp = self.xp
        shifted = z - z.max(axis=1, keepdims=True)
        self.logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.t, self.gamma = t, gamma  # the gradient needs log p, t and gamma
        self.q = -xp.expm1(self.logp)  # 1 - p, in [0, 1]
        return -t * self.q**gamma * self.logp

    def backward(self, gy):
        # with l = log p, q = 1 - p: dy/dl = -t [q^g - g q^(g-1) p l] (the second term -> 0 as
        # q -> 0); then through log_softmax: gz = gl - softmax(z) sum_c gl
        xp, g, q, logp = self.xp, self.gamma, self.q, self.logp
        p = xp.exp(logp)
        safe_q = xp.where(q > 0, q, 1)  # q^(g-1) is only evaluated where q > 0
        second = xp.where(q > 0, g * safe_q ** (g - 1) * p * logp, 0)
        gl = -gy * self.t * (q**g - second)
        return gl - p * gl.sum(axis=1, keepdims=True), None


def _onehot_target(logits: Tensor, target, name: str):
    """(onehot, labels): the target as a float array of logits' shape (n, k, *spatial) and dtype,
    and the integer label array (n, *spatial) it was made from (None for a one-hot target).

    Accepted: integer labels (n, *spatial) or (n, 1, *spatial) in [0, k) (k = 1: {0, 1}, the
    foreground mask), or a one-hot / probability target of logits' shape (any real dtype).
    """
    t = as_tensor(target).data
    n, k, spatial = logits.shape[0], logits.shape[1], logits.shape[2:]
    xp = get_backend(t).xp
    if t.shape == logits.shape:
        return t.astype(logits.dtype, copy=False), None
    if t.ndim == logits.ndim and t.shape == (n, 1, *spatial):
        t = t[:, 0]
    if t.shape != (n, *spatial):
        raise ArgumentError(
            f"{name}: target must be integer labels {(n, *spatial)} or one-hot {logits.shape} "
            f"for logits {logits.shape}, got shape {t.shape}"
        )
    if t.dtype.kind not in "iub":
        raise ArgumentError(f"{name}: label targets {t.shape} must be integers, got {t.dtype}")
    high = max(k, 2)  # one channel: the labels are a 0/1 foreground mask
    if isinstance(t, np.ndarray) and t.size and (t.min() < 0 or t.max() >= high):
        bad = np.unique(t[(t < 0) | (t >= high)])
        raise ArgumentError(
            f"{name}: labels must lie in [0, {high}) for {k} channel(s), got {bad[:5].tolist()}"
        )
    if k == 1:
        onehot = t[:, None].astype(logits.dtype)
    else:
        classes = xp.arange(k).reshape((1, k) + (1,) * len(spatial))
        onehot = (t[:, None] == classes).astype(logits.dtype)
    if not isinstance(t, np.ndarray):
        # on cuda the labels were not checked (that needs a sync): a bad one makes the loss nan
        poison = xp.where((t >= 0) & (t < high), 0.0, xp.nan).astype(logits.dtype)
        onehot = onehot + poison[:, None]
    return onehot, t


def _check_common(logits: Tensor, name: str, activation, include_background: bool, min_ndim: int):
    """Rank, activation and background checks shared by the losses here."""
    if logits.ndim < min_ndim:
        raise ArgumentError(
            f"{name}: logits must be (n, k{', *spatial' if min_ndim > 2 else ''}) with at least "
            f"{min_ndim} axes, got shape {logits.shape}"
        )
    if activation not in ("softmax", "sigmoid", None):
        raise ArgumentError(
            f"{name}: activation must be 'softmax', 'sigmoid' or None, got {activation!r}"
        )
    if logits.shape[1] == 1 and activation == "softmax":
        raise ArgumentError(
            f"{name}: softmax over a single channel is constant 1; use activation='sigmoid'"
        )
    if logits.shape[1] == 1 and not include_background:
        raise ArgumentError(
            f"{name}: include_background=False needs k >= 2 channels, got logits {logits.shape}"
        )


def _check_reduction(reduction: str, name: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ArgumentError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(f: Tensor, reduction: str) -> Tensor:
    """f reduced by "mean" or "sum" over all its elements; "none" returns f."""
    if reduction == "mean":
        return mean(f)
    if reduction == "sum":
        return sum_(f)
    return f


def _class_weights(weight, c: int, name: str) -> np.ndarray | None:
    """weight (None, one number, or c numbers, all finite and >= 0) -> None or a float64 array."""
    if weight is None:
        return None
    try:
        w = np.asarray(weight, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        w = np.array([np.nan])
    if w.size not in (1, c) or not np.isfinite(w).all() or (w < 0).any():
        raise ArgumentError(
            f"{name}: weight must be one number or {c} (one per kept class), all >= 0, "
            f"got {weight!r}"
        )
    return w


def dice_loss(
    logits,
    target,
    *,
    activation: str | None = "softmax",
    include_background: bool = True,
    squared_pred: bool = False,
    jaccard: bool = False,
    reduction: str = "mean",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> Tensor:
    """Soft Dice loss per sample and class, as MONAI's DiceLoss: logits (n, k, *spatial), target
    labels (n, *spatial) (MONAI's to_onehot_y=True) or one-hot (n, k, *spatial).

    p = activation(logits) ("softmax" over axis 1, "sigmoid", or None: logits are already
    probabilities); without the background, channel 0 is dropped after the activation. Over the
    spatial axes (and the batch too if batch=True): I = sum(p t), D = sum(t) + sum(p) (squares if
    squared_pred; jaccard: D = 2 (D - I)), f = 1 - (2 I + smooth_nr) / (D + smooth_dr).
    reduction "mean" / "sum" over f, "none": f itself, (n, c) or (c,) with batch. An empty class
    predicted empty gives f = 0 (smooth_nr = smooth_dr). The target gets no gradient.
    """
    logits = as_tensor(logits)
    _check_common(logits, "dice_loss", activation, include_background, min_ndim=3)
    _check_reduction(reduction, "dice_loss")
    t, _ = _onehot_target(logits, target, "dice_loss")
    options = dict(activation=activation, include_background=include_background, batch=batch)
    options.update(squared_pred=squared_pred, jaccard=jaccard)
    return _reduce(_dice(logits, t, smooth_nr, smooth_dr, **options), reduction)


def _dice(
    logits: Tensor,
    t,
    smooth_nr,
    smooth_dr,
    *,
    activation,
    include_background,
    squared_pred,
    jaccard,
    batch,
) -> Tensor:
    """dice_loss's f before the reduction, (n, c) or (c,); t is a one-hot array like logits."""
    if activation == "softmax":
        p = softmax(logits, axis=1)
    else:
        p = sigmoid(logits) if activation == "sigmoid" else logits
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]
    axes = tuple(range(2, logits.ndim))
    axes = (0, *axes) if batch else axes
    intersection = sum_(p * t, axis=axes)
    ground = (t * t if squared_pred else t).sum(axis=axes)  # a constant: the target
    denominator = sum_(p * p if squared_pred else p, axis=axes) + ground
    if jaccard:
        denominator = 2.0 * (denominator - intersection)
    return 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)


def dice_ce_loss(
    logits,
    target,
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    activation: str | None = "softmax",
    include_background: bool = True,
    squared_pred: bool = False,
    jaccard: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> Tensor:
    """lambda_dice * dice_loss + lambda_ce * cross-entropy -> 0-d, as MONAI's DiceCELoss (mean).

    The Dice term takes the Dice arguments. The cross-entropy always sees the raw logits and all
    channels: softmax_cross_entropy over axis 1 (a one-hot target becomes its argmax, as MONAI),
    or for k = 1 binary_cross_entropy_with_logits against the 0/1 target.
    """
    logits = as_tensor(logits)
    for label, value in (("lambda_dice", lambda_dice), ("lambda_ce", lambda_ce)):
        if not value >= 0:
            raise ArgumentError(f"dice_ce_loss: {label} must be >= 0, got {value}")
    _check_common(logits, "dice_ce_loss", activation, include_background, min_ndim=3)
    onehot, labels = _onehot_target(logits, target, "dice_ce_loss")
    options = dict(activation=activation, include_background=include_background, batch=batch)
    options.update(squared_pred=squared_pred, jaccard=jaccard)
    dice = mean(_dice(logits, onehot, smooth_nr, smooth_dr, **options))
    if logits.shape[1] == 1:
        ce = binary_cross_entropy_with_logits(logits, onehot)
    else:
        labels = onehot.argmax(axis=1) if labels is None else labels
        ce = softmax_cross_entropy(logits, as_tensor(labels), ignore_index=None)
    return lambda_dice * dice + lambda_ce * ce


def focal_loss(
    logits,
    target,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    weight=None,
    activation: str = "sigmoid",
    include_background: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """Focal loss as MONAI's FocalLoss: logits (n, k, *spatial) or (n, k), target labels
    (n, *spatial) or one-hot / in [0, 1] of logits' shape.

    "sigmoid" (MONAI's default): per channel bce * sigmoid(-z (2t - 1))^gamma, times alpha t +
    (1 - alpha)(1 - t) if alpha is given (= torchvision's sigmoid_focal_loss for 0/1 targets).
    "softmax": -t (1 - p)^gamma log p over axis 1, times 1 - alpha on class 0 and alpha on the
    others. weight: one factor or one per kept class (>= 0). Without the background, channel 0
    is dropped after the softmax (MONAI drops it before, and then also drops alpha). reduction:
    "mean" over every element, "sum" of the per-channel spatial means (MONAI's), "none": the map.
    """
    logits = as_tensor(logits)
    name = "focal_loss"
    _check_common(logits, name, activation, include_background, min_ndim=2)
    if activation is None:
        raise ArgumentError(f"{name}: activation must be 'sigmoid' or 'softmax', got None")
    _check_reduction(reduction, name)
    if not gamma >= 0:
        raise ArgumentError(f"{name}: gamma must be >= 0, got {gamma}")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ArgumentError(f"{name}: alpha must lie in [0, 1] or be None, got {alpha}")
    w = _class_weights(weight, logits.shape[1] - (0 if include_background else 1), name)
    t, _ = _onehot_target(logits, target, name)
    fn = SoftmaxFocalFn if activation == "softmax" else SigmoidFocalFn
    loss = fn.apply(logits, t, gamma=float(gamma))
    k, rest = logits.shape[1], (1,) * (logits.ndim - 2)
    xp = get_backend(logits.data).xp
    factor = xp.ones((1, k, *rest))
    if alpha is not None and activation == "softmax":
        factor[:, 0], factor[:, 1:] = 1 - alpha, alpha
    elif alpha is not None:
        factor = alpha * t + (1 - alpha) * (1 - t)
    if not include_background:
        loss, factor = loss[:, 1:], factor[:, 1:]
    if w is not None:
        factor = factor * xp.asarray(w.reshape(1, -1, *rest))
    if alpha is not None or weight is not None:
        loss = loss * as_tensor(factor.astype(logits.dtype))
    if reduction == "sum" and logits.ndim > 2:
        return sum_(mean(loss, axis=tuple(range(2, logits.ndim))))
    return _reduce(loss, reduction)
