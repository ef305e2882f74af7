"""ResNet-18 for 2-D images (He et al. 2016), built from engine.nn layers only: BasicBlocks as
nn.Residual, batch norm, global average pooling. State names are torchvision's resnet18's."""

from __future__ import annotations

from engine import nn
from engine.errors import ArgumentError


def basic_block(in_planes: int, planes: int, stride: int = 1, rng=None) -> nn.Residual:
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)); 3x3 convs without bias, the first
    with `stride`. downsample (1x1 conv with stride + batch norm) only where the shape changes."""
    body = nn.Sequential(
        {
            "conv1": nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False, rng=rng),
            "bn1": nn.BatchNorm2d(planes),
            "relu": nn.ReLU(),
            "conv2": nn.Conv2d(planes, planes, 3, 1, 1, bias=False, rng=rng),
            "bn2": nn.BatchNorm2d(planes),
        }
    )
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, stride, bias=False, rng=rng), nn.BatchNorm2d(planes)
        )
    return nn.Residual(body, downsample, nn.ReLU())


def resnet18_2d(
    in_channels: int = 1,
    num_classes: int = 2,
    width: int = 64,
    stem: str = "imagenet",
    input_size: int | None = None,
    rng=None,
) -> nn.Sequential:
    """ResNet-18: stem, four stages of two BasicBlocks (width, 2, 4, 8 x width channels; stages
    2-4 halve the grid), global average pool, fc. Any input size (the pool is global).

    width 64 is torchvision's resnet18 (11.2 M parameters at 3 input channels); width 16 (0.7 M)
    trains in minutes on 2 CPU cores. stem "imagenet": 7x7 conv stride 2 + 3x3 max pool stride
    2 (the grid shrinks 4x); "small": one 3x3 conv stride 1, no pool, for 28-64 pixel images.
    input_size is accepted for the registry's common signature and unused.
    """
    if stem not in ("imagenet", "small"):
        raise ArgumentError(f"resnet18_2d: stem={stem!r}: expected 'imagenet' or 'small'")
    if width < 1:
        raise ArgumentError(f"resnet18_2d: width must be a positive int, got {width!r}")
    conv1 = (
        nn.Conv2d(in_channels, width, 7, 2, 3, bias=False, rng=rng)
        if stem == "imagenet"
        else nn.Conv2d(in_channels, width, 3, 1, 1, bias=False, rng=rng)
    )
    layers = {"conv1": conv1, "bn1": nn.BatchNorm2d(width), "relu": nn.ReLU()}
    if stem == "imagenet":
        layers["maxpool"] = nn.MaxPool2d(3, 2, 1)
    planes = width
    for stage in range(4):
        out = width * 2**stage
        stride = 1 if stage == 0 else 2
        layers[f"layer{stage + 1}"] = nn.Sequential(
            basic_block(planes, out, stride, rng), basic_block(out, out, 1, rng)
        )
        planes = out
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(planes, num_classes, rng=rng)
    return nn.Sequential(layers)
