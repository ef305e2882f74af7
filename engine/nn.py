"""Layers: Parameter, Module and the building blocks of the models (conv, pool, dense, activations).

A Module finds its Parameters and sub-modules among its attributes (and in lists of modules), in the
order they were set, so `named_parameters()` reads like PyTorch's ("0.weight", "conv1.bias").
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import engine.functional as F
from engine import backend
from engine.init import INITIALISERS
from engine.ops import pair
from engine.ops.fused import conv2d_relu_max_pool2d
from engine.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates; requires_grad is always True."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


class Module:
    """Base class: subclasses set Parameters and sub-modules as attributes and define forward()."""

    training: bool = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def modules(self) -> Iterator[Module]:
        """This module and every sub-module, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_parameters(prefix + name + ".")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """name -> a NumPy copy of each parameter, in registration order."""
        return {
            name: backend.to_device(p.data, "cpu").copy() for name, p in self.named_parameters()
        }

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters (cast to each parameter's dtype and device).
        With strict, missing or unexpected names are an error that lists them; shapes must match."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {value.shape}, parameter has {p.shape}"
                )
            p.data = backend.to_device(value.astype(p.dtype), p.device)

    def astype(self, dtype) -> Module:
        """Convert every parameter to `dtype` (e.g. np.float64 for gradient checks); returns self."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        return self

    def to(self, device: str) -> Module:
        """Move every parameter to `device` ("cpu" or "cuda"); returns self."""
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            p.grad = None
        return self


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class Linear(Module):
    """y = x W^T + b; W (out_features, in_features), He-normal by default (init="glorot" for Glorot)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, rng=None, init: str = "he"
    ):
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(INITIALISERS[init]((out_features, in_features), _rng(rng)))
        self.bias = Parameter(np.zeros(out_features, dtype=np.float32)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


Dense = Linear


class Conv2d(Module):
    """2-D convolution, weight (out_channels, in_channels, kh, kw), He-normal initialisation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = True,
        rng=None,
        init: str = "he",
    ):
        kh, kw = pair(kernel_size, "kernel_size")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        shape = (out_channels, in_channels, kh, kw)
        self.weight = Parameter(INITIALISERS[init](shape, _rng(rng)))
        self.bias = Parameter(np.zeros(out_channels, dtype=np.float32)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class MaxPool2d(Module):
    def __init__(self, kernel_size=2, stride=None, padding=0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(Module):
    def __init__(self, kernel_size=2, stride=None, padding=0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class Flatten(Module):
    def forward(self, x):
        return F.flatten(x)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Dropout(Module):
    """Inverted dropout in training mode, identity in eval mode; the mask comes from `rng`."""

    def __init__(self, p: float = 0.5, rng=None):
        self.p, self.rng = p, _rng(rng)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)


class Sequential(Module):
    """Layers applied in order; children are named "0", "1", ... as in PyTorch.

    Execution detail: with `fuse` True (the default), each run Conv2d -> ReLU -> MaxPool2d of
    exactly these classes runs as one fused op (engine/ops/fused.py), which equals the three
    layers' composition (values and gradients) but never materialises the conv output. The layers,
    their parameters and state_dict names are unchanged. Set `model.fuse = False` to run every
    layer's own forward (code that iterates `model.layers` itself, like engine.explain, is
    unaffected either way)."""

    fuse: bool = True

    def __init__(self, *layers: Module):
        self.layers = list(layers)

    def named_children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def forward(self, x):
        layers, i = self.layers, 0
        while i < len(layers):
            if self.fuse and _conv_relu_pool_at(layers, i):
                conv, pool = layers[i], layers[i + 2]
                x = conv2d_relu_max_pool2d(
                    x,
                    conv.weight,
                    conv.bias,
                    conv.stride,
                    conv.padding,
                    pool.kernel_size,
                    pool.stride,
                    pool.padding,
                )
                i += 3
            else:
                x = layers[i](x)
                i += 1
        return x


def _conv_relu_pool_at(layers: list[Module], i: int) -> bool:
    """True when layers[i:i+3] are exactly Conv2d, ReLU, MaxPool2d (subclasses may override
    forward, so they are never fused)."""
    kinds = tuple(type(layer) for layer in layers[i : i + 3])
    return kinds == (Conv2d, ReLU, MaxPool2d)
