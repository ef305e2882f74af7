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
from engine.ops import ntuple, pair, triple
from engine.ops.conv import check_conv_hyper
from engine.ops.fused import conv2d_relu_max_pool2d
from engine.ops.resample import MODES as RESAMPLE_MODES
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

    def path(self) -> list[tuple[str, Module]] | None:
        """A container's (name, child) pairs that the main signal passes through, in order
        (Sequential: all; Residual: its body's, not the shortcut); None for a plain layer. What
        engine.explain composes geometry along."""
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

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted name, module) of this module ("" ) and every sub-module, depth first:
        "layer2.0.conv1", as PyTorch names them."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

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


class _Pool3d(_Pool2d):
    """_Pool2d's arguments as triples (d, h, w): kernel_size, stride (default kernel_size), padding."""

    def __init__(self, kernel_size=2, stride=None, padding=0):
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else triple(stride, "stride")
        self.padding = triple(padding, "padding")


class MaxPool3d(_Pool3d):
    """Max over each kd x kh x kw window, NCDHW; padding never wins; the gradient goes to the
    first maximum (row-major tap order)."""

    def forward(self, x):
        return F.max_pool3d(x, self.kernel_size, self.stride, self.padding)


class AvgPool3d(_Pool3d):
    """Mean over each kd x kh x kw window, NCDHW; padded zeros count in the mean."""

    def forward(self, x):
        return F.avg_pool3d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """Mean over windows that tile (n, c, h, w) into output_size (an int or a pair); 1 is global
    average pooling. Windows [floor(i h / oh), ceil((i + 1) h / oh)), as PyTorch's."""

    def __init__(self, output_size=1):
        self.output_size = pair(output_size, "output_size")

    def arguments(self) -> dict:
        return {"output_size": self.output_size}

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)


class AdaptiveAvgPool3d(AdaptiveAvgPool2d):
    """AdaptiveAvgPool2d for (n, c, d, h, w): output_size an int or a triple."""

    def __init__(self, output_size=1):
        self.output_size = triple(output_size, "output_size")

    def forward(self, x):
        return F.adaptive_avg_pool3d(x, self.output_size)


class Upsample(Module):
    """F.interpolate as a layer: give size or scale_factor (a number or one per spatial axis);
    mode "nearest" (4-D or 5-D input), "bilinear" (4-D) or "trilinear" (5-D); align_corners for
    the linear modes only (None means False), as PyTorch's nn.Upsample."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest", align_corners=None):
        if mode not in RESAMPLE_MODES:
            raise ArgumentError(f"Upsample: mode must be one of {', '.join(RESAMPLE_MODES)}")
        if (size is None) == (scale_factor is None):
            raise ArgumentError("Upsample: give exactly one of size and scale_factor")
        self.size, self.scale_factor = size, scale_factor
        self.mode, self.align_corners = mode, align_corners

    def arguments(self) -> dict:
        return {
            "size": self.size,
            "scale_factor": self.scale_factor,
            "mode": self.mode,
            "align_corners": self.align_corners,
        }

    def forward(self, x):
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)


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
    are never fused. spec(): {"type": "Sequential", "layers": [each child's spec]}.

    Children may be named, as PyTorch's Sequential(OrderedDict): `Sequential({"conv1": ...,
    "bn1": ...})` names their state "conv1.weight"; the spec then adds "names": [...]."""

    fuse: bool = True

    def __init__(self, *layers: Module):
        self.names = None
        if len(layers) == 1 and isinstance(layers[0], dict):
            self.names = [str(name) for name in layers[0]]
            layers = tuple(layers[0].values())
        self.layers = list(layers)

    def arguments(self) -> dict:
        args = {"layers": [layer.spec() for layer in self.layers]}
        if self.names is not None:
            args["names"] = list(self.names)
        return args

    @classmethod
    def from_arguments(cls, args: dict) -> Sequential:
        layers = [from_spec(s) for s in args["layers"]]
        if args.get("names") is not None:
            return cls(dict(zip(args["names"], layers, strict=True)))
        return cls(*layers)

    def named_children(self):
        for i, layer in enumerate(self.layers):
            yield (str(i) if self.names is None else self.names[i]), layer

    def path(self) -> list[tuple[str, Module]]:
        return list(self.named_children())

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


# ---- normalisation, activations, skip connections ----


class _BatchNorm(Module):
    """Batch norm over axis 1 (PyTorch's BatchNorm*d): weight (ones) and bias (zeros) when
    affine; buffers running_mean (zeros), running_var (ones) float32 and num_batches_tracked
    int64 0-d when track_running_stats (PyTorch's state_dict keys and dtypes). Training mode
    normalises with the batch's statistics and updates the buffers (momentum None: the
    cumulative average over num_batches_tracked); eval mode uses the buffers, or the batch's
    statistics when there are none."""

    ranks: tuple[int, ...] = ()
    layout: str = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine else None
        self.running_mean = self.running_var = self.num_batches_tracked = None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, np.float32))
            self.register_buffer("running_var", np.ones(num_features, np.float32))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def arguments(self) -> dict:
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "track_running_stats": self.track_running_stats,
        }

    def _check(self, x) -> None:
        if x.ndim not in self.ranks or x.shape[1] != self.num_features:
            raise ArgumentError(
                f"{type(self).__name__}({self.num_features}) expects input {self.layout} with "
                f"c = {self.num_features}, got shape {tuple(x.shape)}"
            )

    def _momentum(self) -> float:
        """The update factor of this step; counts the step when the buffers are updated."""
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked += 1  # in place: a 0-d array, on the buffers' device
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _normalise(self, *args):
        return F.batch_norm(*args)

    def _normalise_relu(self, *args):
        return F.batch_norm_relu(*args)

    def _arguments(self, x) -> tuple:
        """The functional's arguments for input x (checked); counts the step in training."""
        self._check(x)
        momentum = self._momentum()
        training = self.training or not self.track_running_stats
        return (x, self.running_mean, self.running_var, self.weight, self.bias, training, momentum)

    def forward(self, x):
        return self._normalise(*self._arguments(x), self.eps)

    def forward_relu(self, x):
        """relu(self(x)) as one fused op (Sequential's FUSIONS rule for this layer -> ReLU)."""
        return self._normalise_relu(*self._arguments(x), self.eps)


class BatchNorm1d(_BatchNorm):
    """Batch norm of (n, c) or (n, c, l) inputs, per channel c."""

    ranks, layout = (2, 3), "(n, c) or (n, c, l)"


class BatchNorm2d(_BatchNorm):
    """Batch norm of (n, c, h, w) inputs, per channel c."""

    ranks, layout = (4,), "(n, c, h, w)"


class BatchNorm3d(_BatchNorm):
    """Batch norm of (n, c, d, h, w) volumes, per channel c."""

    ranks, layout = (5,), "(n, c, d, h, w)"


class _InstanceNorm(_BatchNorm):
    """Instance norm (PyTorch's InstanceNorm*d, defaults affine=False, track_running_stats=False):
    each (sample, channel) normalised over its spatial axes. With track_running_stats the buffers
    are updated in training and used in eval mode, as in batch norm."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def _momentum(self) -> float:
        """PyTorch's InstanceNorm never counts num_batches_tracked (the buffer stays 0)."""
        return 0.1 if self.momentum is None else self.momentum

    def _normalise(self, *args):
        return F.instance_norm(*args)  # batch_norm's argument order, use_input_stats for training

    def _normalise_relu(self, *args):
        return F.instance_norm_relu(*args)


class InstanceNorm2d(_InstanceNorm):
    """Instance norm of (n, c, h, w) inputs."""

    ranks, layout = (4,), "(n, c, h, w)"


class InstanceNorm3d(_InstanceNorm):
    """Instance norm of (n, c, d, h, w) volumes."""

    ranks, layout = (5,), "(n, c, d, h, w)"


class GroupNorm(Module):
    """Group norm: num_channels split into num_groups groups, each (sample, group) normalised over
    its channels and spatial axes; weight (ones) and bias (zeros) per channel when affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        if num_groups < 1 or num_channels % num_groups:
            raise ArgumentError(
                f"GroupNorm: num_groups={num_groups} must divide num_channels={num_channels}"
            )
        self.num_groups, self.num_channels, self.eps, self.affine = (
            num_groups,
            num_channels,
            eps,
            affine,
        )
        self.weight = Parameter(np.ones(num_channels, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_channels, np.float32)) if affine else None

    def arguments(self) -> dict:
        return {
            "num_groups": self.num_groups,
            "num_channels": self.num_channels,
            "eps": self.eps,
            "affine": self.affine,
        }

    def forward(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ArgumentError(
                f"GroupNorm expects input (n, {self.num_channels}, ...), got shape {tuple(x.shape)}"
            )
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(Module):
    """Layer norm over the trailing axes normalized_shape (an int or a tuple): weight (ones) and
    bias (zeros) of that shape when elementwise_affine (bias only if `bias`)."""

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
    ):
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(int(v) for v in shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self.has_bias = bias and elementwise_affine
        affine = elementwise_affine
        self.weight = Parameter(np.ones(self.normalized_shape, np.float32)) if affine else None
        self.bias = (
            Parameter(np.zeros(self.normalized_shape, np.float32)) if self.has_bias else None
        )

    def arguments(self) -> dict:
        return {
            "normalized_shape": self.normalized_shape,
            "eps": self.eps,
            "elementwise_affine": self.elementwise_affine,
            "bias": self.has_bias,
        }

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class LeakyReLU(Module):
    """x where x > 0, else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = negative_slope

    def arguments(self) -> dict:
        return {"negative_slope": self.negative_slope}

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


class GELU(Module):
    """x Phi(x), the exact erf form (approximate="none", PyTorch's default; "tanh" is not offered)."""

    def __init__(self, approximate: str = "none"):
        if approximate != "none":
            raise ArgumentError(f"GELU: approximate={approximate!r}: only 'none' (erf) is offered")
        self.approximate = approximate

    def arguments(self) -> dict:
        return {"approximate": self.approximate}

    def forward(self, x):
        return F.gelu(x)


class Identity(Module):
    """y = x (a placeholder, e.g. a Residual's shortcut written out)."""

    def forward(self, x):
        return x


class Residual(Module):
    """y = activation(body(x) + shortcut(x)): a skip connection. body: a Sequential; shortcut: a
    layer (e.g. a 1x1 conv + batch norm that matches body's output shape) or None for the
    identity; activation: a layer or None.

    State names follow torchvision's BasicBlock: the body's children sit directly under the
    block ("layer1.0.conv1.weight", "layer1.0.bn1.running_mean"), the shortcut is "downsample"
    and the activation "activation". spec(): {"type": "Residual", "body": spec, "shortcut":
    spec | None, "activation": spec | None}; path() is the body's children then the activation."""

    def __init__(self, body: Sequential, shortcut: Module | None = None, activation=None):
        if type(body) is not Sequential:
            raise ArgumentError(
                f"Residual: body must be an nn.Sequential, got {type(body).__name__}"
            )
        self.body, self.shortcut, self.activation = body, shortcut, activation

    def arguments(self) -> dict:
        return {
            "body": self.body.spec(),
            "shortcut": None if self.shortcut is None else self.shortcut.spec(),
            "activation": None if self.activation is None else self.activation.spec(),
        }

    @classmethod
    def from_arguments(cls, args: dict) -> Residual:
        built = {k: None if args.get(k) is None else from_spec(args[k]) for k in args}
        return cls(built.pop("body"), **built)

    def named_children(self):
        yield from self.body.named_children()
        if self.shortcut is not None:
            yield "downsample", self.shortcut
        if self.activation is not None:
            yield "activation", self.activation

    def path(self) -> list[tuple[str, Module]]:
        tail = [] if self.activation is None else [("activation", self.activation)]
        return self.body.path() + tail

    def forward(self, x):
        y = self.body(x)
        y = y + (x if self.shortcut is None else self.shortcut(x))
        return y if self.activation is None else self.activation(y)


class SkipConnection(Module):
    """A skip around `body` (an nn.Sequential), MONAI's SkipConnection: mode "cat" gives
    y = cat([x, body(x)], axis=dim) (the U-Net's concatenated skip: x's channels first), "add"
    y = x + body(x), "mul" y = x * body(x). body(x) must keep x's sizes on every axis but `dim`
    ("cat") or all of them ("add", "mul").

    As in Residual, the body's children sit directly under the block (state "skip.conv.weight",
    not "skip.body.conv.weight"). spec(): {"type": "SkipConnection", "body": spec, "dim": int,
    "mode": str}; path() is the body's children (the grid the block outputs is x's)."""

    MODES = ("cat", "add", "mul")

    def __init__(self, body: Sequential, dim: int = 1, mode: str = "cat"):
        if type(body) is not Sequential:
            raise ArgumentError(
                f"SkipConnection: body must be an nn.Sequential, got {type(body).__name__}"
            )
        if mode not in self.MODES:
            raise ArgumentError(f"SkipConnection: mode={mode!r}: expected one of {self.MODES}")
        self.body, self.dim, self.mode = body, int(dim), mode

    def arguments(self) -> dict:
        return {"body": self.body.spec(), "dim": self.dim, "mode": self.mode}

    @classmethod
    def from_arguments(cls, args: dict) -> SkipConnection:
        return cls(from_spec(args["body"]), args.get("dim", 1), args.get("mode", "cat"))

    def named_children(self):
        yield from self.body.named_children()

    def path(self) -> list[tuple[str, Module]]:
        return self.body.path()

    def forward(self, x):
        y = self.body(x)
        if self.mode == "cat":
            keep = [a for a in range(x.ndim) if a != self.dim % x.ndim]
            if y.ndim != x.ndim or [x.shape[a] for a in keep] != [y.shape[a] for a in keep]:
                raise ArgumentError(
                    f"SkipConnection: body maps {tuple(x.shape)} to {tuple(y.shape)}; to "
                    f"concatenate on axis {self.dim} every other size must match (a U-Net's "
                    "input sizes must divide by 2 per pooling level)"
                )
            return F.cat([x, y], axis=self.dim)
        return x + y if self.mode == "add" else x * y


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
    "BatchNorm1d": BatchNorm1d,
    "BatchNorm2d": BatchNorm2d,
    "BatchNorm3d": BatchNorm3d,
    "InstanceNorm2d": InstanceNorm2d,
    "InstanceNorm3d": InstanceNorm3d,
    "GroupNorm": GroupNorm,
    "LayerNorm": LayerNorm,
    "LeakyReLU": LeakyReLU,
    "GELU": GELU,
    "Identity": Identity,
    "AdaptiveAvgPool2d": AdaptiveAvgPool2d,
    "Residual": Residual,
    "MaxPool3d": MaxPool3d,
    "AvgPool3d": AvgPool3d,
    "AdaptiveAvgPool3d": AdaptiveAvgPool3d,
    "Upsample": Upsample,
    "SkipConnection": SkipConnection,
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


def _norm_relu(layers: list[Module], x):
    return layers[0].forward_relu(x)


FUSIONS: list[Fusion] = [
    Fusion((Conv2d, ReLU, MaxPool2d), _conv_relu_max_pool),  # engine/ops/fused.py
    Fusion((BatchNorm1d, ReLU), _norm_relu),  # engine/ops/fused.py: batch_norm_relu
    Fusion((BatchNorm2d, ReLU), _norm_relu),
    Fusion((BatchNorm3d, ReLU), _norm_relu),
    Fusion((InstanceNorm2d, ReLU), _norm_relu),  # instance_norm_relu
    Fusion((InstanceNorm3d, ReLU), _norm_relu),
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
