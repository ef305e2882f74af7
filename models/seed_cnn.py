"""The source article's CNN: Conv(32, 3x3) ReLU, MaxPool 2, Conv(64, 3x3) ReLU, MaxPool 2, Flatten,
Dense 64 ReLU, Dense num_classes (softmax folded into the loss)."""

from __future__ import annotations

from engine import nn


def seed_cnn(
    in_channels: int = 1, input_size: int = 28, num_classes: int = 10, rng=None
) -> nn.Sequential:
    """For 28x28x1 input: 28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5, so Flatten gives 64*5*5 = 1600."""
    side = ((input_size - 2) // 2 - 2) // 2
    if side < 1:
        raise ValueError(f"seed_cnn needs input_size >= 10, got {input_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 64, rng=rng),
        nn.ReLU(),
        nn.Linear(64, num_classes, rng=rng),
    )
