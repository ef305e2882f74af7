"""Normalisation: batch, instance, group and layer norm. Each is one Function over the kernels
norm_moments / norm_forward / norm_backward, which normalise a (p, q, r) view of x over p and r;
the four norms differ only in that view and in where their affine weight applies."""

from __future__ import annotations

import math

from engine.backend import device_of
from engine.errors import ArgumentError, DeviceError
from engine.function import Function
from engine.tensor import Tensor, as_tensor


class _Normalisation:
    """A mixin of the norms' Functions (not a Function itself): normalise the statistics view x3 (p, q, r) of x with per-slice mean
    and rstd = 1 / sqrt(var + eps), and differentiate it. With `batch_stats` the statistics are
    x3's own (they depend on x: the full backward); otherwise they are constants (running stats).
    The affine weight either is per slice (`w`, fused into the kernels) or per element of the
    affine view (n, m, s) (`_affine_forward`), for the norms whose groups span several channels."""

    def _normalise(self, x3, mean, rstd, w, b, batch_stats: bool, relu: bool = False):
        # x3, the statistics and the per-slice weight are all backward needs (xhat is recomputed);
        # with relu, y3 too: the ReLU passed gy where y3 > 0
        self.x3, self.mean, self.rstd, self.w, self.batch_stats = x3, mean, rstd, w, batch_stats
        self.relu = relu
        if not relu:
            return self.k.norm_forward(x3, mean, rstd, w, b)
        self.y3 = self.k.norm_relu_forward(x3, mean, rstd, w, b)
        return self.y3

    def _normalise_backward(self, gy3):
        """(gx3, gw (q,), gb (q,)) for y3 = xhat w + b (relu(.) when fused), xhat = (x3 - mean)
        rstd."""
        if self.batch_stats and self.relu:
            return self.k.norm_relu_backward(gy3, self.y3, self.x3, self.mean, self.rstd, self.w)
        if self.batch_stats:
            return self.k.norm_backward(gy3, self.x3, self.mean, self.rstd, self.w)
        if self.relu:  # d relu(z) / d z = (y > 0)
            gy3 = self.k.relu_backward(gy3, self.y3)
        # constant statistics: d y / d x = w rstd only
        xhat = self.k.norm_forward(self.x3, self.mean, self.rstd, None, None)
        scale = self.rstd if self.w is None else self.rstd * self.w
        return gy3 * scale[:, None], (gy3 * xhat).sum(axis=(0, 2)), gy3.sum(axis=(0, 2))

    def _affine_forward(self, xhat, affine_shape, weight, bias):
        """y = xhat w[m] + b[m] on the affine view (n, m, s) of xhat; w, b (m,) or None."""
        self.xhat = xhat.reshape(affine_shape)  # gw = sum gy xhat
        self.affine_w = weight
        y = self.xhat if weight is None else self.xhat * weight[:, None]
        return y if bias is None else y + bias[:, None]

    def _affine_backward(self, gy):
        """(gxhat shaped like gy, gw (m,), gb (m,)) of _affine_forward."""
        g = gy.reshape(self.xhat.shape)
        gw = (g * self.xhat).sum(axis=(0, 2))
        gb = g.sum(axis=(0, 2))
        gxhat = g if self.affine_w is None else g * self.affine_w[:, None]
        return gxhat.reshape(gy.shape), gw, gb

    def _grads(self, gx, gw, gb):
        """gx, then gw and gb for the parameters this call was given (weight, bias: optional)."""
        grads = [gx]
        if self.has_weight:
            grads.append(gw)
        if self.has_bias:
            grads.append(gb)
        return tuple(grads)

    def _params(self, params, has_weight, has_bias):
        self.has_weight, self.has_bias = has_weight, has_bias
        weight = params[0] if has_weight else None
        bias = params[-1] if has_bias else None
        return weight, bias


def _update_running(running, value, momentum: float) -> None:
    """running <- (1 - momentum) running + momentum value, in place (running keeps its dtype)."""
    running[...] = ((1 - momentum) * running + momentum * value.astype(running.dtype)).astype(
        running.dtype
    )


class BatchNormFn(_Normalisation, Function):
    """Batch norm: x (n, c, *spatial) viewed as (n, c, s), one mean and variance per channel over
    the batch and space; weight and bias (c,) fused into the kernels. In training the statistics
    are the batch's (the biased variance normalises; the unbiased one, times N / (N - 1) with
    N = n s, enters running_var) and running_mean/running_var are updated in place; otherwise the
    running statistics normalise and are constants for the gradient. relu: y = relu(that), one
    op (the BatchNorm*d -> ReLU fusion)."""

    def forward(
        self, x, *params, running_mean, running_var, training, momentum, eps, has_w, has_b, relu
    ):
        weight, bias = self._params(params, has_w, has_b)
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        if training:
            mean, var = self.k.norm_moments(x3)
            if running_mean is not None:
                count = n * x3.shape[2]
                _update_running(running_mean, mean, momentum)
                _update_running(running_var, var * (count / (count - 1)), momentum)
        else:
            mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
        rstd = 1 / self.xp.sqrt(var + eps)
        return self._normalise(x3, mean, rstd, weight, bias, training, relu).reshape(x.shape)

    def backward(self, gy):
        # training: gx = w rstd (gy - mean(gy) - xhat mean(gy xhat)), means over (n, s) per
        # channel; eval: gx = w rstd gy. Both: gw = sum gy xhat, gb = sum gy over (n, s). With
        # relu, gy is first masked by y > 0.
        gx3, gw, gb = self._normalise_backward(gy.reshape(self.x3.shape))
        return self._grads(gx3.reshape(gy.shape), gw, gb)


class GroupNormFn(_Normalisation, Function):
    """Group norm: x (n, c, *spatial), channels split into g groups of c/g; one mean and variance
    per (sample, group) over its channels and space: the view (1, n g, c/g s). weight and bias
    (c,) act per channel afterwards, on the affine view (n, c, s)."""

    def forward(self, x, *params, num_groups, eps, has_w, has_b):
        weight, bias = self._params(params, has_w, has_b)
        n, c = x.shape[:2]
        x3 = x.reshape(1, n * num_groups, -1)
        mean, var = self.k.norm_moments(x3)
        xhat = self._normalise(x3, mean, 1 / self.xp.sqrt(var + eps), None, None, True)
        return self._affine_forward(xhat, (n, c, -1), weight, bias).reshape(x.shape)

    def backward(self, gy):
        # y = xhat w + b per channel: gxhat = gy w, then the normalisation's own derivative
        # gx = rstd (gxhat - mean(gxhat) - xhat mean(gxhat xhat)) per (sample, group)
        gxhat, gw, gb = self._affine_backward(gy)
        gx3 = self._normalise_backward(gxhat.reshape(self.x3.shape))[0]
        return self._grads(gx3.reshape(gy.shape), gw, gb)


class InstanceNormFn(_Normalisation, Function):
    """Instance norm with the instance's own statistics: x (n, c, *spatial) viewed as (1, n c, s),
    one slice per (sample, channel), so weight and bias (c,) are per slice (tiled over the batch)
    and fused into the kernels. When running stats are given, they are updated in place with the
    batch mean of the per-instance means and unbiased variances (PyTorch's rule). relu: y =
    relu(that), one op (the InstanceNorm*d -> ReLU fusion)."""

    def forward(self, x, *params, running_mean, running_var, momentum, eps, has_w, has_b, relu):
        weight, bias = self._params(params, has_w, has_b)
        n, c = x.shape[:2]
        x3 = x.reshape(1, n * c, -1)
        mean, var = self.k.norm_moments(x3)
        self.n = n  # gw, gb sum the per-slice gradients over the batch
        w, b = (None if p is None else self.xp.tile(p, n) for p in (weight, bias))
        y = self._normalise(x3, mean, 1 / self.xp.sqrt(var + eps), w, b, True, relu)
        if running_mean is not None:
            count = x3.shape[2]
            _update_running(running_mean, mean.reshape(n, c).mean(axis=0), momentum)
            unbiased = (var * (count / (count - 1))).reshape(n, c).mean(axis=0)
            _update_running(running_var, unbiased, momentum)
        return y.reshape(x.shape)

    def backward(self, gy):
        # per (sample, channel) slice: gx = w rstd (gy - mean(gy) - xhat mean(gy xhat)) over its
        # spatial axes (gy masked by y > 0 first with relu); gw = sum gy xhat and gb = sum gy
        # per slice, then summed over the batch
        gx3, gw, gb = self._normalise_backward(gy.reshape(self.x3.shape))
        gw, gb = (None if g is None else g.reshape(self.n, -1).sum(axis=0) for g in (gw, gb))
        return self._grads(gx3.reshape(gy.shape), gw, gb)


class LayerNormFn(_Normalisation, Function):
    """Layer norm over the trailing axes: x (*lead, *normalized_shape) viewed as (1, L, T) with
    L = prod(lead), T = prod(normalized_shape); one mean and variance per leading index. weight
    and bias (normalized_shape) act elementwise, on the affine view (L, T, 1)."""

    def forward(self, x, *params, trailing, eps, has_w, has_b):
        weight, bias = self._params(params, has_w, has_b)
        lead = x.size // trailing if trailing else 0
        x3 = x.reshape(1, lead, trailing)
        mean, var = self.k.norm_moments(x3)
        xhat = self._normalise(x3, mean, 1 / self.xp.sqrt(var + eps), None, None, True)
        self.shapes = [None if p is None else p.shape for p in (weight, bias)]
        flat = (None if p is None else p.reshape(-1) for p in (weight, bias))
        y = self._affine_forward(xhat, (lead, trailing, 1), *flat)
        return y.reshape(x.shape)

    def backward(self, gy):
        # as group norm's, with the weight elementwise over the normalised axes
        gxhat, gw, gb = self._affine_backward(gy)
        gx3 = self._normalise_backward(gxhat.reshape(self.x3.shape))[0]
        w_shape, b_shape = self.shapes
        return self._grads(
            gx3.reshape(gy.shape),
            None if w_shape is None else gw.reshape(w_shape),
            None if b_shape is None else gb.reshape(b_shape),
        )


# ---- the wrappers: arguments checked once, here ----


def _array(v, name: str, x: Tensor, shape: tuple[int, ...]):
    """A running-statistics array (or None) of `shape` on x's device; raw array, not a Tensor."""
    if v is None:
        return None
    v = v.data if isinstance(v, Tensor) else v
    if tuple(v.shape) != shape:
        raise ArgumentError(f"{name} must have shape {shape} for x {x.shape}, got {v.shape}")
    if device_of(v) != x.device:
        raise DeviceError(f"{name} is on {device_of(v)} but x is on {x.device}")
    return v


def _affine(x: Tensor, weight, bias, shape: tuple[int, ...], op: str) -> list[Tensor]:
    """[weight, bias] as Tensors, the absent ones left out, each checked to have `shape`."""
    params = []
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        p = as_tensor(p)
        if p.shape != shape:
            raise ArgumentError(
                f"{op}: {name} must have shape {shape} for x {x.shape}, got {p.shape}"
            )
        params.append(p)
    return params


def _channels(x, op: str, min_ndim: int = 2) -> Tensor:
    x = as_tensor(x)
    if x.ndim < min_ndim or x.ndim > 5:
        raise ArgumentError(
            f"{op}: x must be (n, c), (n, c, l), (n, c, h, w) or (n, c, d, h, w)"
            f"{' with spatial axes' if min_ndim > 2 else ''}, got shape {x.shape}"
        )
    return x


def batch_norm(
    x,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch norm (PyTorch's F.batch_norm): x (n, c), (n, c, l), (n, c, h, w) or (n, c, d, h, w)
    -> y of x's shape, y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c.

    training: mean_c and the biased var_c over every axis but 1; running_mean/running_var ((c,)
    arrays, or None) are updated in place, r <- (1 - momentum) r + momentum stat, with the
    UNBIASED variance. Otherwise the running statistics are used (they must be given).
    weight, bias: (c,) or None (1 and 0)."""
    args = (running_mean, running_var, weight, bias, training, momentum, eps)
    return apply_batch_norm(x, *args, relu=False)


def apply_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, *, relu):
    """batch_norm's arguments checked and BatchNormFn applied; relu: y = relu(batch_norm(...)) as
    the same one op (engine.ops.fused.batch_norm_relu)."""
    x = _channels(x, "batch_norm")
    c = x.shape[1]
    running_mean = _array(running_mean, "running_mean", x, (c,))
    running_var = _array(running_var, "running_var", x, (c,))
    if training and x.size // c <= 1:
        raise ArgumentError(
            f"batch_norm: expected more than 1 value per channel when training, got x {x.shape}"
        )
    if not training and (running_mean is None or running_var is None):
        raise ArgumentError("batch_norm: running_mean and running_var are needed when not training")
    params = _affine(x, weight, bias, (c,), "batch_norm")
    return BatchNormFn.apply(
        x,
        *params,
        running_mean=running_mean,
        running_var=running_var,
        training=bool(training),
        momentum=float(momentum),
        eps=float(eps),
        has_w=weight is not None,
        has_b=bias is not None,
        relu=relu,
    )


def instance_norm(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance norm (PyTorch's F.instance_norm): x (n, c, *spatial), 1 to 3 spatial axes -> y of
    x's shape, each (sample, channel) normalised over its spatial axes; weight, bias (c,) or None.

    use_input_stats False normalises with running_mean/running_var instead (batch norm's eval
    mode); True updates them in place when given (mean over the batch of the per-instance
    statistics, unbiased variance)."""
    args = (running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    return apply_instance_norm(x, *args, relu=False)


def apply_instance_norm(
    x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, *, relu
):
    """instance_norm's arguments checked and its Function applied; relu: y = relu(instance_norm(
    ...)) as the same one op (engine.ops.fused.instance_norm_relu)."""
    x = _channels(x, "instance_norm", min_ndim=3)
    n, c = x.shape[:2]
    if not use_input_stats:
        args = (running_mean, running_var, weight, bias, False, momentum, eps)
        return apply_batch_norm(x, *args, relu=relu)
    if x.size // (n * c) <= 1:
        raise ArgumentError(
            f"instance_norm: expected more than 1 spatial element per channel, got x {x.shape}"
        )
    running_mean = _array(running_mean, "running_mean", x, (c,))
    running_var = _array(running_var, "running_var", x, (c,))
    params = _affine(x, weight, bias, (c,), "instance_norm")
    return InstanceNormFn.apply(
        x,
        *params,
        running_mean=running_mean,
        running_var=running_var,
        momentum=float(momentum),
        eps=float(eps),
        has_w=weight is not None,
        has_b=bias is not None,
        relu=relu,
    )


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Group norm (PyTorch's F.group_norm): x (n, c, *spatial) -> y of x's shape; the c channels
    form num_groups groups of c / num_groups consecutive channels, each (sample, group)
    normalised over its channels and spatial axes (biased variance); weight, bias (c,) or None."""
    x = _channels(x, "group_norm")
    c = x.shape[1]
    if not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ArgumentError(
            f"group_norm: num_groups={num_groups!r} must be a positive divisor of the {c} "
            f"channels of x {x.shape}"
        )
    params = _affine(x, weight, bias, (c,), "group_norm")
    return GroupNormFn.apply(
        x,
        *params,
        num_groups=num_groups,
        eps=float(eps),
        has_w=weight is not None,
        has_b=bias is not None,
    )


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Layer norm (PyTorch's F.layer_norm): x (*lead, *normalized_shape) -> y of x's shape, each
    leading index normalised over the trailing axes normalized_shape (an int or a tuple; biased
    variance); weight, bias of shape normalized_shape or None, applied elementwise."""
    x = as_tensor(x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or len(shape) > x.ndim or tuple(x.shape[x.ndim - len(shape) :]) != shape:
        raise ArgumentError(
            f"layer_norm: normalized_shape {shape} must equal the trailing axes of x {x.shape}"
        )
    params = _affine(x, weight, bias, shape, "layer_norm")
    return LayerNormFn.apply(
        x,
        *params,
        trailing=math.prod(shape),
        eps=float(eps),
        has_w=weight is not None,
        has_b=bias is not None,
    )
