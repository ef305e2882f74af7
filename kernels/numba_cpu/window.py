"""The window rules every numba_cpu kernel that pools shares: the max tie rule, ReLU's select, and the
window walk (which taps of a window, and which windows of a tap, fall inside the input).

The helpers are inlined at Numba IR level (`inline="always"`), so a caller's loop compiles as if
the rule were written in it: selects, not calls, and the loop still vectorises.
"""

from __future__ import annotations

from numba import njit

from kernels.numpy_cpu.xp import out_size  # noqa: F401  (re-exported: the kernels' output-size rule)

INLINE = dict(inline="always", cache=True, fastmath=False, nogil=True)


@njit(**INLINE)
def better(val, best):
    """Whether a tap's value val replaces the window's running maximum best (taps visited in
    row-major order u*kw + v): the first maximum wins (strict '>'), a NaN beats a number, and
    once the maximum is NaN it sticks (no comparison with NaN is true). This is np.argmax's
    rule, which numpy_cpu's max_pool2d_forward uses. `|` and `&`, not `or` and `and`: the
    short-circuit forms become data-dependent branches, which mispredict (5x slower, measured)."""
    return (val > best) | ((val != val) & (best == best))


@njit(**INLINE)
def relu(val, zero):
    """max(val, 0) as a select; a NaN stays NaN (as np.maximum). zero is the caller's typed zero
    (a literal 0 would turn float32 selects into float64)."""
    return val if (val > 0) | (val != val) else zero


@njit(**INLINE)
def first_max4(v0, v1, v2, v3):
    """(max, first argmax) of a 2x2 window's taps 0..3 in row-major order, by `better`."""
    best, arg = v0, 0  # tap 0 always starts the window
    win = better(v1, best)
    best, arg = (v1 if win else best), (1 if win else arg)
    win = better(v2, best)
    best, arg = (v2 if win else best), (2 if win else arg)
    win = better(v3, best)
    best, arg = (v3 if win else best), (3 if win else arg)
    return best, arg


@njit(**INLINE)
def window_span(i, k, s, p, size):
    """(first, lo, hi) of window i, k taps wide at stride s and padding p, along one axis: tap u
    reads index first + u (first = i*s - p), and the indices in [lo, hi) are the ones inside
    [0, size) (none when hi <= lo). Callers loop over the index, not the tap, so every index
    is provably >= 0 (LLVM then drops Numba's negative-index wraparound) and the tap is
    idx - first."""
    first = i * s - p
    return first, max(0, first), min(size, first + k)


@njit(**INLINE)
def windows_inside(u, s, p, q, size):
    """(j0, j1): the windows j < q whose tap u reads index j*s + u - p inside [0, size);
    j1 >= j0 always."""
    j0 = max(0, -(-(p - u) // s))  # ceil((p - u) / s)
    j1 = min(q, (size - 1 + p - u) // s + 1)
    return j0, max(j0, j1)
