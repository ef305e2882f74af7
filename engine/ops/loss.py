"""Softmax, log-softmax and the losses: MSE, softmax cross-entropy (2-D or per voxel, with an
ignore_index), binary cross-entropy (+ logits). Each returns a mean as a 0-d tensor.
"""

from __future__ import annotations

import numpy as np

from engine.errors import ArgumentError
from engine.function import Function
from engine.ops.elementwise import stable_sigmoid
from engine.tensor import Tensor, as_tensor


class SoftmaxFn(Function):
    """y = exp(x) / sum exp(x) along `axis` (a non-negative int); same shape and dtype as x.

    The max along the axis is subtracted first, so no exp overflows; each slice sums to 1.
    """

    def forward(self, x, *, axis):
        e = self.xp.exp(x - x.max(axis=axis, keepdims=True))
        # the Jacobian is written in the output alone: y (delta - y)
        self.y, self.axis = e / e.sum(axis=axis, keepdims=True), axis
        return self.y

    def backward(self, gy):
        # dy_i/dx_j = y_i (delta_ij - y_j)  =>  gx = y (gy - sum(gy y))
        return (self.y * (gy - (gy * self.y).sum(axis=self.axis, keepdims=True)),)


class LogSoftmaxFn(Function):
    """y = x - logsumexp(x) along `axis` (a non-negative int); same shape and dtype as x.

    Computed from x - max(x), so it stays finite for logits of any magnitude.
    """

    def forward(self, x, *, axis):
        shifted = x - x.max(axis=axis, keepdims=True)
        # exp(y) is the softmax that the gradient needs
        self.y = shifted - self.xp.log(self.xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.axis = axis
        return self.y

    def backward(self, gy):
        # d log softmax_i / dx_j = delta_ij - softmax_j  =>  gx = gy - softmax sum(gy)
        return (gy - self.xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True),)


class MSELossFn(Function):
    """loss = mean((y - t)^2) over all elements: y, t of one shape and dtype -> 0-d, y's dtype.

    Both y and t are differentiable (gt = -gy). The squares are summed in float64.
    """

    def forward(self, y, t):
        self.d = y - t  # the residual is the whole derivative
        # squares summed in float64: float32 inputs up to 65535 square to 4e9 and lose digits
        return self.xp.asarray(
            self.xp.mean(self.xp.square(self.d.astype(np.float64))), dtype=y.dtype
        )

    def backward(self, gloss):
        # d/dy mean((y - t)^2) = 2 (y - t) / size; d/dt = -that
        g = (2 * gloss / self.d.size) * self.d
        return (g if self.needs_grad[0] else None, -g if self.needs_grad[1] else None)


class SoftmaxCrossEntropyFn(Function):
    """loss = mean_i [logsumexp(z_i) - z_i[t_i]]: logits z (n, k) float, t (n,) int -> 0-d.

    One fused kernel pair (softmax_cross_entropy_forward/_backward), stable for any logits.
    The integer targets get no gradient (None).
    """

    def forward(self, logits, t):
        self.t = t  # the class picked in each row: its probability is lowered by 1
        loss, self.probs = self.k.softmax_cross_entropy_forward(logits, t)  # probs for backward
        return loss

    def backward(self, gloss):
        # d/dz mean_i[lse(z_i) - z_i,t_i] = (softmax(z) - onehot(t)) / n
        return self.k.softmax_cross_entropy_backward(self.probs, self.t, gloss), None


class MaskedSoftmaxCrossEntropyFn(Function):
    """loss = sum over kept i of [logsumexp(z_i) - z_i[t_i]] / (number kept), the classes on axis 1:
    logits z (n, k, *spatial) float, t (n, *spatial) int -> 0-d, z's dtype.

    An element is kept unless its target equals `ignore_index` (None keeps all). No element kept:
    the loss is nan and the gradient 0 (PyTorch's rule). A kept target outside [0, k) makes the
    loss and its gradient nan (the wrapper raises first on the CPU). Written in xp (NumPy or
    CuPy), no device sync. The targets get no gradient (None).
    """

    def forward(self, z, t, *, ignore_index):
        xp = self.xp
        k = z.shape[1]
        kept = t != ignore_index if ignore_index is not None else xp.ones(t.shape, dtype=bool)
        in_range = (t >= 0) & (t < k)
        self.t = xp.where(in_range, t, 0)[:, None]  # (n, 1, *spatial): safe to index with
        # per-element weight: 1 kept, 0 ignored, nan for a kept target outside [0, k)
        self.w = xp.where(kept, xp.where(in_range, 1.0, xp.nan), 0.0).astype(z.dtype)
        self.count = kept.sum()  # stays on the device: no sync
        shifted = z - z.max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        self.probs = e / s  # softmax: the gradient is (probs - onehot(t)) w / count
        rows = (xp.log(s) - xp.take_along_axis(shifted, self.t, axis=1))[:, 0]
        total = (rows * self.w).sum()
        loss = xp.where(self.count > 0, total / xp.maximum(self.count, 1), xp.nan)
        return xp.asarray(loss, dtype=z.dtype)

    def backward(self, gloss):
        # d/dz_i [lse(z_i) - z_i,t_i] = softmax(z_i) - onehot(t_i), times w_i / count for the mean
        xp, k = self.xp, self.probs.shape[1]
        classes = xp.arange(k).reshape((1, k) + (1,) * (self.probs.ndim - 2))
        scale = (self.w * (gloss / xp.maximum(self.count, 1)))[:, None]
        return (self.probs - (classes == self.t)) * scale.astype(self.probs.dtype), None


class BCEFn(Function):
    """loss = mean(-(t log p + (1 - t) log(1 - p))): p, t of one shape and dtype -> 0-d.

    p are probabilities in [0, 1]; both logs are clamped at -100 (PyTorch's rule), so p = 0 or 1
    gives a finite loss. The gradient w.r.t. p divides by max(p (1 - p), 1e-12) (PyTorch's rule
    too). A float target t that requires grad gets the exact derivative of the clamped forward.
    """

    _EPS = 1e-12

    def forward(self, p, t):
        self.p, self.t = p, t  # both appear in gp = (p - t) / (p (1 - p))
        xp = self.xp
        # log clamped at -100, as in PyTorch, so p = 0 or 1 gives a finite loss
        log_p = xp.maximum(xp.log(xp.where(p > 0, p, 1)), -100)
        log_p = xp.where(p > 0, log_p, -100)
        log_q = xp.maximum(xp.log(xp.where(p < 1, 1 - p, 1)), -100)
        log_q = xp.where(p < 1, log_q, -100)
        if self.needs_grad[1]:
            self.log_odds = log_p - log_q  # gt = -(log p - log(1 - p)), clamped logs included
        return xp.asarray(-(t * log_p + (1 - t) * log_q).mean(), dtype=p.dtype)

    def backward(self, gloss):
        # d/dp -(t log p + (1-t) log(1-p)) = (p - t) / (p (1 - p)), denominator clamped;
        # d/dt = -(log p - log(1 - p)); both divided by size for the mean
        scale = gloss / self.p.size
        gp = gt = None
        if self.needs_grad[0]:
            gp = scale * (self.p - self.t) / self.xp.maximum(self.p * (1 - self.p), self._EPS)
        if self.needs_grad[1]:
            gt = -scale * self.log_odds
        return gp, gt


class BCEWithLogitsFn(Function):
    """loss = mean(-(t log s(z) + (1 - t) log(1 - s(z)))), s = sigmoid: z, t of one shape -> 0-d.

    Computed as max(z, 0) - z t + log(1 + exp(-|z|)), finite for logits of any magnitude.
    A float target t that requires grad gets its gradient, -z / size.
    """

    def forward(self, z, t):
        self.z, self.t = z, t  # gz = s(z) - t needs both; gt = -z needs z
        xp = self.xp
        # -(t log s(z) + (1-t) log(1-s(z))) = max(z, 0) - z t + log(1 + exp(-|z|)): never overflows
        loss = xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))
        return xp.asarray(loss.mean(), dtype=z.dtype)

    def backward(self, gloss):
        # d/dz = sigmoid(z) - t, d/dt = -z; both divided by size for the mean
        scale = gloss / self.z.size
        gz = scale * (stable_sigmoid(self.xp, self.z) - self.t) if self.needs_grad[0] else None
        gt = -scale * self.z if self.needs_grad[1] else None
        return gz, gt


def _check_axis(x: Tensor, axis: int, name: str) -> int:
    """axis (negatives allowed) checked against x.ndim -> the non-negative axis."""
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{name}: axis {axis} out of range for shape {x.shape}")
    return axis % x.ndim


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum exp(x) along `axis`, same shape and dtype; computed after subtracting the
    max, so it is stable for any logits."""
    x = as_tensor(x)
    return SoftmaxFn.apply(x, axis=_check_axis(x, axis, "softmax"))


def log_softmax(x, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along `axis`, same shape and dtype; stable for any magnitude."""
    x = as_tensor(x)
    return LogSoftmaxFn.apply(x, axis=_check_axis(x, axis, "log_softmax"))


def _same_shape(y: Tensor, t: Tensor, name: str) -> Tensor:
    """The target, checked against the prediction's shape; a constant target takes y's dtype."""
    if y.shape != t.shape:
        raise ValueError(f"{name}: prediction shape {y.shape} != target shape {t.shape}")
    if t.dtype == y.dtype:
        return t
    if t.requires_grad:
        raise TypeError(f"{name}: prediction is {y.dtype} but target is {t.dtype}")
    return as_tensor(t.data.astype(y.dtype))


def mse_loss(y, t) -> Tensor:
    """mean((y - t)^2) over all elements; y and t of the same shape."""
    y, t = as_tensor(y), as_tensor(t)
    return MSELossFn.apply(y, _same_shape(y, t, "mse_loss"))


def softmax_cross_entropy(logits, t, ignore_index: int | None = -100) -> Tensor:
    """mean over the kept elements of [logsumexp(z) - z[t]] over the class axis 1 -> 0-d, as
    torch's cross_entropy: logits (n, k) or (n, k, *spatial) (e.g. NCDHW), t (n,) or
    (n, *spatial) integer classes in [0, k) or `ignore_index` (left out of the mean; None
    keeps every element). Every element ignored: the loss is nan and the gradient 0, as in PyTorch.

    2-D logits with no ignored target run the fused kernels (MaskedSoftmaxCrossEntropyFn runs the
    rest). A target outside [0, k) that is not ignore_index raises ArgumentError on the CPU; on
    cuda (no sync) it makes the loss nan. On cuda the targets are not scanned (that would cost a
    device sync), so 2-D logits run the fused kernels only with ignore_index=None, where no row
    can be left out; otherwise the masked path, which leaves ignored rows out on the device.
    """
    logits, t = as_tensor(logits), as_tensor(t)
    if logits.ndim < 2:
        raise ArgumentError(
            f"softmax_cross_entropy expects logits (n, k) or (n, k, *spatial), got {logits.shape}"
        )
    n, k, spatial = logits.shape[0], logits.shape[1], logits.shape[2:]
    if t.dtype.kind not in "iu" or t.shape != (n, *spatial):
        raise ArgumentError(
            f"softmax_cross_entropy expects integer targets of shape {(n, *spatial)} for logits "
            f"{logits.shape}, got {t.dtype} {t.shape}"
        )
    if ignore_index is not None and not isinstance(ignore_index, (int, np.integer)):
        raise ArgumentError(
            f"softmax_cross_entropy: ignore_index must be an int or None, got {ignore_index!r}"
        )
    # Checked on the CPU only: on a GPU, t.min() and t.max() would be two reductions and two
    # device syncs per step. The cuda kernels never index out of bounds; a row whose target lies
    # outside [0, k) gets a NaN loss and NaN gradients, so the mean loss shows it without a sync.
    # The fused kernels know no ignore_index, so on cuda (targets unseen) they run only when
    # nothing can be ignored; the masked path counts the kept rows on the device, no sync either.
    if _on_host(t.data):
        fused = not _check_targets(t.data, k, ignore_index)
    else:
        fused = ignore_index is None
    if logits.ndim == 2 and fused:
        return SoftmaxCrossEntropyFn.apply(logits, t)
    return MaskedSoftmaxCrossEntropyFn.apply(logits, t, ignore_index=ignore_index)


def _on_host(a) -> bool:
    """Whether the targets are a NumPy array, so that scanning them costs no device sync."""
    return isinstance(a, np.ndarray)


def _check_targets(t: np.ndarray, k: int, ignore_index: int | None) -> bool:
    """Raise ArgumentError if a target outside [0, k) is not ignore_index; True if any is ignored.
    One min/max pass when nothing can be ignored (the 2-D classification case)."""
    if t.size == 0:
        return False
    tmin, tmax = int(t.min()), int(t.max())
    could_ignore = ignore_index is not None and tmin <= ignore_index <= tmax
    if 0 <= tmin and tmax < k and not could_ignore:
        return False
    ignored = t == ignore_index if ignore_index is not None else np.zeros(t.shape, dtype=bool)
    bad = ~ignored & ((t < 0) | (t >= k))
    if bad.any():
        values = np.unique(t[bad])
        raise ArgumentError(
            f"softmax_cross_entropy: targets must lie in [0, {k}) or equal ignore_index="
            f"{ignore_index}, got {', '.join(str(v) for v in values[:5])}"
            + (" ..." if values.size > 5 else "")
        )
    return bool(ignored.any())


def binary_cross_entropy(p, t) -> Tensor:
    """mean(-(t log p + (1 - t) log(1 - p))) -> 0-d, for probabilities p in [0, 1] and targets t
    of p's shape (t may be soft, in [0, 1]); both logs clamped at -100, as in PyTorch."""
    p, t = as_tensor(p), as_tensor(t)
    return BCEFn.apply(p, _same_shape(p, t, "binary_cross_entropy"))


def binary_cross_entropy_with_logits(z, t) -> Tensor:
    """binary_cross_entropy(sigmoid(z), t) -> 0-d, computed stably from the logits z (the
    source article's loss); t of z's shape, in [0, 1]. No clamping is needed."""
    z, t = as_tensor(z), as_tensor(t)
    return BCEWithLogitsFn.apply(z, _same_shape(z, t, "binary_cross_entropy_with_logits"))
