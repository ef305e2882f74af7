"""Convolution by im2col + GEMM: the reference kernels, written against `xp` so CuPy can reuse them.

Layout: x (n, c, h, w), W (oc, c, kh, kw). Zero padding of ph/pw on each side.
oh = (h + 2 ph - kh) // sh + 1, ow likewise. cols rows run over (n, oh, ow), columns over (c, kh, kw),
so that `cols @ W.reshape(oc, -1).T` is the convolution in (n, oh, ow, oc) order.
"""

from __future__ import annotations

from .xp import array_module, out_size


def _window(start: int, step: int, count: int) -> slice:
    """The slice that picks `count` window origins `start, start + step, ...` along one axis."""
    return slice(start, start + step * (count - 1) + 1, step)


def im2col(x, kernel_size, stride, padding):
    """x (n, c, h, w) -> cols (n*oh*ow, c*kh*kw); element [(b, i, j), (ch, u, v)] =
    x_padded[b, ch, i*sh + u, j*sw + v]."""
    xp = array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = xp.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
    for u in range(kh):
        for v in range(kw):
            # every output pixel's (u, v) tap at once: a strided view of the padded input
            cols[:, :, :, :, u, v] = xpad[:, :, _window(u, sh, oh), _window(v, sw, ow)].transpose(
                0, 2, 3, 1
            )
    return cols.reshape(n * oh * ow, c * kh * kw)


def col2im(cols, x_shape, kernel_size, stride, padding):
    """The adjoint of im2col: cols (n*oh*ow, c*kh*kw) -> x (n, c, h, w), overlapping taps summed."""
    xp = array_module(cols)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x_shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    cols6 = cols.reshape(n, oh, ow, c, kh, kw)
    xpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for u in range(kh):
        for v in range(kw):
            xpad[:, :, _window(u, sh, oh), _window(v, sw, ow)] += cols6[:, :, :, :, u, v].transpose(
                0, 3, 1, 2
            )
    return xp.ascontiguousarray(xpad[:, :, ph : ph + h, pw : pw + w])


def conv2d_forward(x, W, b, stride, padding):
    """y[b, o, i, j] = sum_{ch,u,v} x_pad[b, ch, i*sh+u, j*sw+v] W[o, ch, u, v] + b[o];
    x (n, c, h, w), W (oc, c, kh, kw), b (oc,) or None -> y (n, oc, oh, ow), C-contiguous."""
    xp = array_module(x)
    oc, _, kh, kw = W.shape
    n, _, h, w = x.shape
    oh, ow = out_size(h, kh, stride[0], padding[0]), out_size(w, kw, stride[1], padding[1])
    y = im2col(x, (kh, kw), stride, padding) @ W.reshape(oc, -1).T  # (n*oh*ow, oc)
    if b is not None:
        y += b
    return xp.ascontiguousarray(y.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2))


def conv2d_backward_input(gy, W, x_shape, stride, padding):
    """gx = col2im(gy_rows @ W_mat): gy (n, oc, oh, ow), W (oc, c, kh, kw) -> gx of x_shape."""
    oc, _, kh, kw = W.shape
    gy_rows = gy.transpose(0, 2, 3, 1).reshape(-1, oc)  # (n*oh*ow, oc)
    return col2im(gy_rows @ W.reshape(oc, -1), x_shape, (kh, kw), stride, padding)


def conv2d_backward_weight(gy, x, kernel_size, stride, padding):
    """gW = gy_rows^T @ im2col(x): gy (n, oc, oh, ow), x (n, c, h, w) -> gW (oc, c, kh, kw)."""
    oc = gy.shape[1]
    gy_rows = gy.transpose(0, 2, 3, 1).reshape(-1, oc)
    gW = gy_rows.T @ im2col(x, kernel_size, stride, padding)  # (oc, c*kh*kw)
    return gW.reshape(oc, x.shape[1], *kernel_size)
