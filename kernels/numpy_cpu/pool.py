"""Max and average pooling, NCHW, written against `xp` so CuPy can reuse them.

oh = (h + 2 ph - kh) // sh + 1. Max pooling pads with -inf (padding never wins); average pooling pads
with zeros that count in the mean (PyTorch's count_include_pad=True). Window taps are numbered
row-major, idx = u * kw + v; the max-pool tie rule is np.argmax's: the first maximum in that order,
and the first NaN wins over any number (so NaNs propagate). The GPU flavours state it once each.
"""

from __future__ import annotations

from .xp import array_module, out_size


def _tap(u: int, v: int, stride, oh: int, ow: int):
    """Index of tap (u, v) of every window in the padded input: a strided (oh, ow) view."""
    sh, sw = stride
    return (..., slice(u, u + sh * (oh - 1) + 1, sh), slice(v, v + sw * (ow - 1) + 1, sw))


def _geometry(x_shape, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    h, w = x_shape[2], x_shape[3]
    return out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)


def _pad(x, padding, value):
    xp = array_module(x)
    ph, pw = padding
    if not (ph or pw):
        return x
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _unpad(xpad, x_shape, padding):
    xp = array_module(xpad)
    ph, pw = padding
    return xp.ascontiguousarray(xpad[:, :, ph : ph + x_shape[2], pw : pw + x_shape[3]])


def max_pool2d_forward(x, kernel_size, stride, padding):
    """x (n, c, h, w) -> (y (n, c, oh, ow), argmax int32 (n, c, oh, ow)).
    argmax is the flat tap index u * kw + v of the first maximum in each window."""
    xp = array_module(x)
    kh, kw = kernel_size
    oh, ow = _geometry(x.shape, kernel_size, stride, padding)
    xpad = _pad(x, padding, -xp.inf)
    taps = xp.empty((*x.shape[:2], oh, ow, kh * kw), dtype=x.dtype)
    for idx in range(kh * kw):
        taps[..., idx] = xpad[_tap(idx // kw, idx % kw, stride, oh, ow)]
    argmax = taps.argmax(axis=-1).astype(xp.int32)  # argmax returns the first maximum
    y = xp.take_along_axis(taps, argmax[..., None].astype(xp.intp), axis=-1)[..., 0]
    return y, argmax


def max_pool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    """gy (n, c, oh, ow), argmax -> gx (n, c, h, w): gx[window's argmax tap] += gy[window]."""
    xp = array_module(gy)
    kh, kw = kernel_size
    oh, ow = gy.shape[2], gy.shape[3]
    ph, pw = padding
    gxpad = xp.zeros((*x_shape[:2], x_shape[2] + 2 * ph, x_shape[3] + 2 * pw), dtype=gy.dtype)
    for idx in range(kh * kw):
        gxpad[_tap(idx // kw, idx % kw, stride, oh, ow)] += xp.where(argmax == idx, gy, 0)
    return _unpad(gxpad, x_shape, padding)


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """x (n, c, h, w) -> y (n, c, oh, ow) = sum of the window / (kh * kw), padded zeros included."""
    xp = array_module(x)
    kh, kw = kernel_size
    oh, ow = _geometry(x.shape, kernel_size, stride, padding)
    xpad = _pad(x, padding, 0)
    y = xp.zeros((*x.shape[:2], oh, ow), dtype=x.dtype)
    for idx in range(kh * kw):
        y += xpad[_tap(idx // kw, idx % kw, stride, oh, ow)]
    return y / (kh * kw)


def avg_pool2d_backward(gy, x_shape, kernel_size, stride, padding):
    """gy (n, c, oh, ow) -> gx (n, c, h, w): each window spreads gy / (kh * kw) over its taps."""
    xp = array_module(gy)
    kh, kw = kernel_size
    oh, ow = gy.shape[2], gy.shape[3]
    ph, pw = padding
    gxpad = xp.zeros((*x_shape[:2], x_shape[2] + 2 * ph, x_shape[3] + 2 * pw), dtype=gy.dtype)
    share = gy / (kh * kw)
    for idx in range(kh * kw):
        gxpad[_tap(idx // kw, idx % kw, stride, oh, ow)] += share
    return _unpad(gxpad, x_shape, padding)
