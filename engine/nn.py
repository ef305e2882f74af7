"""Layers: Parameter, Module (parameters, buffers, sub-modules, named like PyTorch's "0.weight"),
the building blocks of the models, and the layer protocol: `spec()` / `from_spec()` through the one
table `LAYERS`, `geometry()` for spatial layers, and `FUSIONS` for Sequential's fused runs.

Every layer describes itself once: `arguments()` lists its constructor arguments (JSON-safe), which
`spec()` wraps as {"type": ..., **arguments}. Checkpoints, engine.deploy and engine.explain read
specs and geometry, never isinstance chains.

Adding a layer touches: (1) its class here (constructor, forward, `arguments()`, `geometry()` if
it resamples space, `register_buffer` for non-trainable state), (2) its `LAYERS` entry, (3) an entry
in engine.deploy's `FORWARD` table if it should run NumPy-only, (4) its tests in tests/nn/ (gradient
check, an example in test_protocol's EXAMPLES). A new op follows STYLE.md section 3; a fused op
adds a `FUSIONS` rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

import engine.functional as F
from engine import backend
from engine.errors import ArgumentError
from engine.init import INITIALISERS
from engine.ops import pair
from engine.ops.conv import check_conv_hyper, ntuple
from engine.ops.fused import conv2d_relu_max_pool2d
from engine.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates; requires_grad is always True."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


@dataclass(frozen=True)
class Geometry:
    """How a spatial layer maps its output grid onto its input grid, per spatial axis ((h, w), or
    (d, h, w) for volumes: one entry per axis in kernel_size, stride, padding).

    kind: "conv" (learned feature maps: what Grad-CAM explains) or "pool". Output cell u is
    centred on input coordinate s u - p + (k - 1) / 2 (kernel k, stride s, padding p); for a
    transposed conv (transposed=True), which scatters input cell i onto outputs i s - p + t,
    on (u + p - (k - 1) / 2) / s. engine.explain composes these over 2-D models only.
    """

    kind: str
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    transposed: bool = False

    def centre_map(self) -> tuple[tuple[float, float], ...]:
        """(scale, offset) per spatial axis: input centre = scale * u + offset."""
        k, s, p = self.kernel_size, self.stride, self.padding
        if self.transposed:
            return tuple((1 / s[a], (p[a] - (k[a] - 1) / 2) / s[a]) for a in range(len(k)))
        return tuple((float(s[a]), -p[a] + (k[a] - 1) / 2) for a in range(len(k)))


def _plain(value):
    """A JSON-safe copy of a spec value: tuples become lists, NumPy scalars Python numbers."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


class Module:
    """Base class: subclasses set Parameters and sub-modules as attributes and define forward().

    Non-trainable state (running statistics, counters) is registered with `register_buffer`: it is
    an attribute holding a plain array, carried by state_dict, to() and astype(), never by
    parameters(). Layers in `LAYERS` override `arguments()` (and `geometry()` where spatial).
    """

    training: bool = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    # ---- the layer protocol ----

    def arguments(self) -> dict:
        """The constructor arguments that rebuild this layer (no rng, no init: weights are loaded)."""
        return {}

    def spec(self) -> dict:
        """{"type": class name, **arguments()}, JSON-safe; nn.from_spec(spec) rebuilds the layer.
        Only classes listed in LAYERS have a spec (ArgumentError otherwise)."""
        name = type(self).__name__
        if LAYERS.get(name) is not type(self):
            raise ArgumentError(f"{name} has no spec: only the classes in nn.LAYERS can be rebuilt")
        return {"type": name, **_plain(self.arguments())}

    @classmethod
    def from_arguments(cls, args: dict) -> Module:
        """The layer built from `arguments()`' dict; Sequential overrides it to build children."""
        return cls(**args)

    def geometry(self) -> Geometry | None:
        """Kernel, stride and padding of a layer that resamples space; None for the others."""
        return None

    # ---- sub-modules, parameters, buffers ----

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

    def register_buffer(self, name: str, array) -> None:
        """Set attribute `name` to `array` (NumPy or CuPy) as non-trainable state of this module:
        saved and loaded with the parameters, moved by to(), cast by astype() when floating."""
        if not hasattr(array, "dtype") or isinstance(array, Tensor):
            raise ArgumentError(f"buffer {name!r} must be an array, got {type(array).__name__}")
        if isinstance(getattr(self, name, None), (Parameter, Module)):
            raise ArgumentError(f"buffer {name!r} would replace a parameter or sub-module")
        names = self.__dict__.setdefault("_buffer_names", [])
        if name not in names:
            names.append(name)
        setattr(self, name, array)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) of every buffer, this module's first, then each child's ("1.running_mean")."""
        for name in self.__dict__.get("_buffer_names", []):
            yield prefix + name, getattr(self, name)
        for name, child in self.named_children():
            yield from child.named_buffers(prefix + name + ".")

    def buffers(self) -> list:
        return [b for _, b in self.named_buffers()]

    def _state_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        """(state_dict name, owning module, attribute) of every parameter then buffer, module by
        module: PyTorch's state_dict order."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, self, name
        for name in self.__dict__.get("_buffer_names", []):
            yield prefix + name, self, name
        for name, child in self.named_children():
            yield from child._state_slots(prefix + name + ".")

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
        """name -> a NumPy copy of each parameter and buffer, in registration order."""
        state = {}
        for name, module, attr in self._state_slots():
            value = getattr(module, attr)
            value = value.data if isinstance(value, Parameter) else value
            state[name] = backend.to_device(value, "cpu").copy()
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters and buffers (cast to each one's dtype and device).
        With strict, missing or unexpected names are an error that lists them; shapes must match."""
        slots = {name: (module, attr) for name, module, attr in self._state_slots()}
        missing, unexpected = sorted(set(slots) - set(state)), sorted(set(state) - set(slots))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, (module, attr) in slots.items():
            if name not in state:
                continue
            own = getattr(module, attr)
            current = own.data if isinstance(own, Parameter) else own
            value = np.asarray(state[name])
            if value.shape != current.shape:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {value.shape}, {attr} has {current.shape}"
                )
            value = backend.to_device(value.astype(current.dtype), backend.device_of(current))
            if isinstance(own, Parameter):
                own.data = value
            else:
                setattr(module, attr, value)

    def _map_buffers(self, fn) -> None:
        for m in self.modules():
            for name in m.__dict__.get("_buffer_names", []):
                setattr(m, name, fn(getattr(m, name)))

    def astype(self, dtype) -> Module:
        """Convert every parameter and floating buffer to `dtype` (e.g. np.float64 for gradient
        checks); integer buffers (counters) keep their dtype. Returns self."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        self._map_buffers(lambda b: b.astype(dtype) if b.dtype.kind == "f" else b)
        return self

    def to(self, device: str) -> Module:
        """Move every parameter and buffer to `device` ("cpu" or "cuda"); returns self."""
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            p.grad = None
        self._map_buffers(lambda b: backend.to_device(b, device))
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

    def arguments(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
        }

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


Dense = Linear


class _ConvNd(Module):
    """Shared by the convolutions over `nd` spatial axes (class attribute), plain or transposed:
    kernel_size, stride, padding (and output_padding) kept as nd-tuples, He-normal weight
    (out_channels, in_channels, *k), or (in_channels, out_channels, *k) when transposed (PyTorch's
    layouts; He's fan_in is then out_channels * prod(k), as PyTorch computes it), zero bias."""

    nd = 2
    transposed = False

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
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = ntuple(kernel_size, self.nd, "kernel_size")
        self.stride = ntuple(stride, self.nd, "stride")
        self.padding = ntuple(padding, self.nd, "padding")
        output_padding = self.output_padding if self.transposed else None  # set by the subclass
        check_conv_hyper(type(self).__name__, self.stride, self.padding, output_padding)
        channels = (in_channels, out_channels) if self.transposed else (out_channels, in_channels)
        self.weight = Parameter(INITIALISERS[init]((*channels, *self.kernel_size), _rng(rng)))
        self.bias = Parameter(np.zeros(out_channels, dtype=np.float32)) if bias else None

    def arguments(self) -> dict:
        extra = {"output_padding": self.output_padding} if self.transposed else {}
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            **extra,
            "bias": self.bias is not None,
        }

    def geometry(self) -> Geometry:
        return Geometry("conv", self.kernel_size, self.stride, self.padding, self.transposed)


class Conv2d(_ConvNd):
    """2-D convolution, weight (out_channels, in_channels, kh, kw), He-normal initialisation."""

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class Conv3d(_ConvNd):
    """3-D convolution over volumes (n, c, d, h, w), weight (out_channels, in_channels, kd, kh,
    kw), He-normal; kernel_size, stride, padding: an int or a triple (d, h, w)."""

    nd = 3

    def forward(self, x):
        return F.conv3d(x, self.weight, self.bias, self.stride, self.padding)


class _ConvTransposeNd(_ConvNd):
    """Shared by the transposed convolutions: PyTorch's constructor arguments and order."""

    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        bias: bool = True,
        rng=None,
        init: str = "he",
    ):
        self.output_padding = ntuple(output_padding, self.nd, "output_padding")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, rng, init)

    def forward(self, x):
        op = F.conv_transpose2d if self.nd == 2 else F.conv_transpose3d
        return op(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution (learned upsampling), weight (in_channels, out_channels, kh, kw);
    oh = (h - 1) sh - 2 ph + kh + oph, output_padding < stride per axis."""

    nd = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution over volumes, weight (in_channels, out_channels, kd, kh, kw);
    od = (d - 1) sd - 2 pd + kd + opd per axis, output_padding < stride per axis."""

    nd = 3


class _Pool2d(Module):
    """Shared by the pools: kernel_size, stride (default kernel_size) and padding kept as pairs."""

    def __init__(self, kernel_size=2, stride=None, padding=0):
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding")

    def arguments(self) -> dict:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def geometry(self) -> Geometry:
        return Geometry("pool", self.kernel_size, self.stride, self.padding)


class MaxPool2d(_Pool2d):
    """Max over each window, NCHW; padding never wins; the gradient goes to the first maximum."""

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Mean over each window, NCHW; padded zeros count in the mean (PyTorch's default)."""

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

    def arguments(self) -> dict:
        return {"p": self.p}

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)


class Sequential(Module):
    """Layers applied in order; children are named "0", "1", ... as in PyTorch.

    Execution detail: with `fuse` True (the default), each run of layers matching a rule in
    `FUSIONS` (exactly those classes, e.g. Conv2d -> ReLU -> MaxPool2d) runs as the rule's fused
    op, which equals the layers' composition (values and gradients) but never materialises the
    intermediate outputs. The layers, their parameters and state_dict names are unchanged. Set
    `model.fuse = False` to run every layer's own forward (code that iterates `model.layers`
    itself, like engine.explain, is unaffected either way). Subclasses that override forward()
    are never fused. spec(): {"type": "Sequential", "layers": [each child's spec]}."""

    fuse: bool = True

    def __init__(self, *layers: Module):
        self.layers = list(layers)

    def arguments(self) -> dict:
        return {"layers": [layer.spec() for layer in self.layers]}

    @classmethod
    def from_arguments(cls, args: dict) -> Sequential:
        return cls(*(from_spec(s) for s in args["layers"]))

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
            rule = _fusion_at(layers, i) if self.fuse else None
            if rule is not None:
                x = rule.run(layers[i : i + len(rule.pattern)], x)
                i += len(rule.pattern)
            else:
                x = layers[i](x)
                i += 1
        return x


# ---- the layer table: what spec() names and from_spec() builds ----

LAYERS: dict[str, type[Module]] = {
    "Linear": Linear,
    "Conv2d": Conv2d,
    "Conv3d": Conv3d,
    "ConvTranspose2d": ConvTranspose2d,
    "ConvTranspose3d": ConvTranspose3d,
    "MaxPool2d": MaxPool2d,
    "AvgPool2d": AvgPool2d,
    "Flatten": Flatten,
    "ReLU": ReLU,
    "Sigmoid": Sigmoid,
    "Tanh": Tanh,
    "Dropout": Dropout,
    "Sequential": Sequential,
}


def from_spec(spec: dict) -> Module:
    """The layer (or Sequential, recursively) that spec() described, freshly initialised: load
    its weights with load_state_dict. Unknown types or arguments raise ArgumentError."""
    if not isinstance(spec, dict) or spec.get("type") not in LAYERS:
        kind = spec.get("type") if isinstance(spec, dict) else spec
        raise ArgumentError(f"unknown layer type {kind!r}: expected one of {', '.join(LAYERS)}")
    args = {k: v for k, v in spec.items() if k != "type"}
    try:
        return LAYERS[spec["type"]].from_arguments(args)
    except (TypeError, KeyError) as exc:
        raise ArgumentError(f"{spec['type']}: cannot build from {args} ({exc})") from exc


# ---- fusion rules: runs of layers that Sequential executes as one op ----


@dataclass(frozen=True)
class Fusion:
    """A run of layers of exactly these classes, executed by run(layers, x) -> y as one op whose
    values and gradients equal the layers' composition."""

    pattern: tuple[type[Module], ...]
    run: Callable[[list[Module], Tensor], Tensor]


def _conv_relu_max_pool(layers: list[Module], x):
    conv, _, pool = layers
    return conv2d_relu_max_pool2d(
        x,
        conv.weight,
        conv.bias,
        conv.stride,
        conv.padding,
        pool.kernel_size,
        pool.stride,
        pool.padding,
    )


FUSIONS: list[Fusion] = [
    Fusion((Conv2d, ReLU, MaxPool2d), _conv_relu_max_pool),  # engine/ops/fused.py
]


def _fusion_at(layers: list[Module], i: int) -> Fusion | None:
    """The first rule whose pattern the layers from i on match class for class (subclasses may
    override forward, so they never match), or None."""
    for rule in FUSIONS:
        run = layers[i : i + len(rule.pattern)]
        if len(run) == len(rule.pattern) and all(
            type(layer) is cls for layer, cls in zip(run, rule.pattern, strict=True)
        ):
            return rule
    return None
