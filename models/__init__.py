"""The architectures, built from engine.nn only, and one registry: `models.get(name, **kwargs)`.

Every model returned by `get` carries `.config = {"name": ..., **kwargs}`, enough to rebuild it
(checkpoints store it beside the weights and the model's layer spec, engine.nn's `spec()`).
"""

from __future__ import annotations

from collections.abc import Callable

from engine import nn
from engine.errors import ArgumentError
from models.lenet import lenet5
from models.mlp import mlp
from models.resnet import resnet18_2d
from models.seed_cnn import seed_cnn
from models.unet import unet2d, unet3d

REGISTRY: dict[str, Callable[..., nn.Module]] = {"seed_cnn": seed_cnn, "lenet5": lenet5, "mlp": mlp}
REGISTRY["resnet18_2d"] = resnet18_2d
REGISTRY["unet2d"] = unet2d
REGISTRY["unet3d"] = unet3d

# What each model outputs: "classification" (n, num_classes) logits, or "segmentation"
# (n, num_classes, *spatial) logits per pixel/voxel. Models not listed classify.
TASKS: dict[str, str] = {"unet2d": "segmentation", "unet3d": "segmentation"}


def names(task: str | None = None) -> list[str]:
    """The registered model names, sorted; only those of `task` ("classification" or
    "segmentation") when given."""
    return sorted(n for n in REGISTRY if task is None or TASKS.get(n, "classification") == task)


def get(name: str, **kwargs) -> nn.Module:
    """Build model `name` with keyword arguments (in_channels, input_size, num_classes, rng, ...)."""
    if name not in REGISTRY:
        raise ArgumentError(f"unknown model {name!r}: expected one of {', '.join(names())}")
    model = REGISTRY[name](**kwargs)
    model.config = {"name": name, **{k: v for k, v in kwargs.items() if k != "rng"}}
    return model
