"""ReLU and softmax cross-entropy: the elementwise and row-wise kernels, written against `xp`."""

from __future__ import annotations

from .xp import array_module


def relu_forward(x):
    """y = max(x, 0), same shape and dtype."""
    return array_module(x).maximum(x, 0)


def relu_backward(gy, y):
    """gx = gy where y > 0, else 0 (the subgradient at 0 is 0, as in PyTorch)."""
    return array_module(gy).where(y > 0, gy, 0)


def softmax_cross_entropy_forward(logits, t):
    """logits (n, k) float, t (n,) int class indices -> (loss 0-d, probs (n, k)).
    loss = mean_i [logsumexp(logits_i) - logits_i[t_i]], computed after subtracting each row's max,
    so logits of any size stay finite."""
    xp = array_module(logits)
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    loss = (xp.log(s[:, 0]) - shifted[xp.arange(n), t]).mean()
    return xp.asarray(loss, dtype=logits.dtype), e / s


def softmax_cross_entropy_backward(probs, t, gloss):
    """glogits = (probs - onehot(t)) * gloss / n."""
    xp = array_module(probs)
    n = probs.shape[0]
    g = probs.copy()
    g[xp.arange(n), t] -= 1
    g *= gloss / n
    return g
