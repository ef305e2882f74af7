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
def larger(val, best):
    """best replaced by val when val > best: one maxss. The float select `better` asks for (a
    compound condition) compiles to a branch on x86, which mispredicts on real data; this one
    does not. With no NaN among the taps, the running maximum by `larger` is `better`'s maximum
    and the first tap equal to it is `better`'s argmax (ties keep the first: +0.0 == -0.0 too)."""
    return val if val > best else best


@njit(**INLINE)
def first_max4(v0, v1, v2, v3):
    """(max, first argmax) of a 2x2 window's taps 0..3 in row-major order, by `better`: a chain
    of selects, which LLVM turns into vector blends where the caller's loop vectorises (the
    fused conv + pool kernels). In a loop LLVM leaves scalar, x86 compiles those float selects
    to branches: use first_max4_scalar there."""
    best, arg = v0, 0  # tap 0 always starts the window
    win = better(v1, best)
    best, arg = (v1 if win else best), (1 if win else arg)
    win = better(v2, best)
    best, arg = (v2 if win else best), (2 if win else arg)
    win = better(v3, best)
    best, arg = (v3 if win else best), (3 if win else arg)
    return best, arg


@njit(**INLINE)
def first_max4_scalar(v0, v1, v2, v3):
    """first_max4 for a loop that stays scalar (a strided 2x2 pool plane), without
    data-dependent branches where no tap is NaN: the maximum by `larger`, then the first tap
    equal to it by integer selects (cmov). 6.5x faster than first_max4 there on random numbers
    (measured: the float selects on better's compound condition became mispredicted branches);
    slower inside a vectorised loop (its NaN branch stops the vectoriser). A window with a NaN
    takes first_max4."""
    best = larger(v3, larger(v2, larger(v1, v0)))
    if (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3):
        return first_max4(v0, v1, v2, v3)
    arg = 3 if v3 == best else 0  # from the last tap back: the first equal one wins
    arg = 2 if v2 == best else arg
    arg = 1 if v1 == best else arg
    return best, (0 if v0 == best else arg)


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
