"""U-Nets for 2-D images and 3-D volumes (MONAI's BasicUNet shape), built from engine.nn layers
only, nested nn.SkipConnection blocks, so that the whole network is spec data (checkpoints,
engine.deploy and nn.from_spec rebuild it)."""

from __future__ import annotations

from engine import nn
from engine.errors import ArgumentError

NORMS = ("instance", "batch", "group")
ACTIVATIONS = ("leakyrelu", "relu", "gelu")


def _norm(kind: str, channels: int, nd: int, groups: int) -> nn.Module:
    """Instance norm affine (MONAI's ("instance", {"affine": True})), batch norm, or group norm
    with min(groups, channels) groups."""
    if kind == "instance":
        return (nn.InstanceNorm2d if nd == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "batch":
        return (nn.BatchNorm2d if nd == 2 else nn.BatchNorm3d)(channels)
    groups = min(groups, channels)
    while channels % groups:  # the largest divisor of channels not above `groups`
        groups -= 1
    return nn.GroupNorm(groups, channels)


def _activation(kind: str, negative_slope: float) -> nn.Module:
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope)
    return nn.ReLU() if kind == "relu" else nn.GELU()


def two_conv(c_in: int, c_out: int, nd: int, opts: dict, rng) -> nn.Sequential:
    """(3^nd conv padding 1 -> norm -> activation) twice: MONAI's TwoConv. State names
    "conv_0.conv", "conv_0.norm", "conv_1.conv", ... as MONAI's ("conv_0.conv.weight")."""
    conv = nn.Conv2d if nd == 2 else nn.Conv3d
    layers = {}
    for i, (a, b) in enumerate(((c_in, c_out), (c_out, c_out))):
        layers[f"conv_{i}"] = nn.Sequential(
            {
                "conv": conv(a, b, 3, 1, 1, bias=opts["bias"], rng=rng),
                "norm": _norm(opts["norm"], b, nd, opts["groups"]),
                "act": _activation(opts["act"], opts["negative_slope"]),
            }
        )
    return nn.Sequential(layers)


def _level(features: tuple[int, ...], level: int, nd: int, opts: dict, rng) -> nn.SkipConnection:
    """The block below resolution `level - 1`: max pool 2, TwoConv to features[level], the
    deeper levels (if any) with their TwoConv after the concatenation, transposed conv 2 stride
    2 back to features[level - 1] channels; wrapped in a SkipConnection that concatenates the
    block's input (the encoder features) before the upsampled ones, as MONAI's UpCat."""
    pool = nn.MaxPool2d(2) if nd == 2 else nn.MaxPool3d(2)
    up = nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d
    f_in, f = features[level - 1], features[level]
    layers = {"pool": pool, "down": two_conv(f_in, f, nd, opts, rng)}
    if level + 1 < len(features):
        layers["skip"] = _level(features, level + 1, nd, opts, rng)
        layers["upcat"] = two_conv(2 * f, f, nd, opts, rng)
    layers["up"] = up(f, f_in, 2, 2, rng=rng)
    return nn.SkipConnection(nn.Sequential(layers), dim=1, mode="cat")


def _unet(
    nd: int,
    in_channels: int,
    num_classes: int,
    features,
    norm: str,
    act: str,
    negative_slope: float,
    groups: int,
    bias: bool,
    rng,
) -> nn.Sequential:
    features = tuple(int(f) for f in features)
    name = f"unet{nd}d"
    if len(features) < 2 or min(features) < 1:
        raise ArgumentError(f"{name}: features must be >= 2 positive ints, got {features}")
    if norm not in NORMS:
        raise ArgumentError(f"{name}: norm={norm!r}: expected one of {NORMS}")
    if act not in ACTIVATIONS:
        raise ArgumentError(f"{name}: act={act!r}: expected one of {ACTIVATIONS}")
    if in_channels < 1 or num_classes < 1:
        raise ArgumentError(f"{name}: in_channels and num_classes must be >= 1")
    opts = {"norm": norm, "act": act, "negative_slope": negative_slope}
    opts |= {"groups": groups, "bias": bias}
    conv = nn.Conv2d if nd == 2 else nn.Conv3d
    return nn.Sequential(
        {
            "conv_0": two_conv(in_channels, features[0], nd, opts, rng),
            "skip": _level(features, 1, nd, opts, rng),
            "upcat": two_conv(2 * features[0], features[0], nd, opts, rng),
            "final_conv": conv(features[0], num_classes, 1, rng=rng),
        }
    )


def unet3d(
    in_channels: int = 1,
    num_classes: int = 2,
    features=(16, 32, 64, 128),
    norm: str = "instance",
    act: str = "leakyrelu",
    negative_slope: float = 0.1,
    groups: int = 8,
    bias: bool = True,
    input_size=None,
    rng=None,
) -> nn.Sequential:
    """3-D U-Net, MONAI's BasicUNet shape: x (n, in_channels, d, h, w) -> logits (n, num_classes,
    d, h, w). Level i has features[i] channels: two (3x3x3 conv, norm, activation) per level, max
    pool 2 down, transposed conv 2 stride 2 up to the level's channels, the encoder features
    concatenated before the upsampled ones, two convs, a 1x1x1 conv head (no activation).

    d, h and w must divide by 2 ** (len(features) - 1) (MONAI pads instead). norm: "instance"
    (affine, MONAI's default), "batch" or "group" (`groups` groups); act: "leakyrelu" (slope 0.1,
    MONAI's default), "relu" or "gelu". Differs from BasicUNet: len(features) levels, not a fixed
    5, and the up conv outputs features[i] channels (BasicUNet's features[i + 1] // 2, the same
    when the features double). input_size is accepted for the registry's signature and unused.
    """
    args = (in_channels, num_classes, features, norm, act, negative_slope, groups, bias, rng)
    return _unet(3, *args)


def unet2d(
    in_channels: int = 1,
    num_classes: int = 2,
    features=(16, 32, 64, 128),
    norm: str = "instance",
    act: str = "leakyrelu",
    negative_slope: float = 0.1,
    groups: int = 8,
    bias: bool = True,
    input_size=None,
    rng=None,
) -> nn.Sequential:
    """unet3d for 2-D images: x (n, in_channels, h, w) -> logits (n, num_classes, h, w); h and w
    must divide by 2 ** (len(features) - 1)."""
    args = (in_channels, num_classes, features, norm, act, negative_slope, groups, bias, rng)
    return _unet(2, *args)
