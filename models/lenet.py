"""LeNet-5 (LeCun et al. 1998) for 28x28 input: tanh activations and average pooling, as published."""

from __future__ import annotations

from engine import nn


def lenet5(
    in_channels: int = 1, input_size: int = 28, num_classes: int = 10, rng=None
) -> nn.Sequential:
    """Conv(6, 5x5, pad 2) Tanh AvgPool 2, Conv(16, 5x5) Tanh AvgPool 2, Dense 120, 84, num_classes."""
    side = (input_size // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"lenet5 needs input_size >= 12, got {input_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2, rng=rng, init="glorot"),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, rng=rng, init="glorot"),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120, rng=rng, init="glorot"),
        nn.Tanh(),
        nn.Linear(120, 84, rng=rng, init="glorot"),
        nn.Tanh(),
        nn.Linear(84, num_classes, rng=rng, init="glorot"),
    )
