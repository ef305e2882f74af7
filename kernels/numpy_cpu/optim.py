"""Optimizer updates, in place on the parameter and state arrays; PyTorch's update rules."""

from __future__ import annotations

from .xp import array_module


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    """g' = g + wd p; v = mu v + g'; step = g' + mu v (nesterov) or v; p -= lr step.
    v is the velocity buffer (zeros at first, which equals PyTorch's v = g on step 1); None if mu = 0."""
    if weight_decay:
        g = g + weight_decay * p
    if momentum:
        v *= momentum
        v += g
        g = g + momentum * v if nesterov else v
    p -= lr * g


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    step is t >= 1; weight decay is L2 (added to g), as in torch.optim.Adam."""
    xp = array_module(p)
    if weight_decay:
        g = g + weight_decay * p
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    denom = xp.sqrt(v) / ((1 - beta2**step) ** 0.5) + eps
    p -= (lr / (1 - beta1**step)) * (m / denom)
