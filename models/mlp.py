"""A multi-layer perceptron on flattened images: the baseline every CNN should beat."""

from __future__ import annotations

from engine import nn


def mlp(
    in_channels: int = 1, input_size: int = 28, num_classes: int = 10, hidden: int = 128, rng=None
) -> nn.Sequential:
    """Flatten, Dense hidden ReLU, Dense hidden ReLU, Dense num_classes."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * input_size * input_size, hidden, rng=rng),
        nn.ReLU(),
        nn.Linear(hidden, hidden, rng=rng),
        nn.ReLU(),
        nn.Linear(hidden, num_classes, rng=rng),
    )
