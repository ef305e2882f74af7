"""ONNX export and import of medgrad models, built with the `onnx` package's helpers.

to_onnx walks the layer spec (engine.nn's `model.spec()`) through one table, ONNX_BUILDERS: spec
type -> a function that appends that layer's ONNX nodes; from_onnx reads back the graphs we write.
`onnx` is imported here only (the `export` extra); engine.deploy never needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import deploy
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.errors import ArgumentError, SerializationError

DEFAULT_OPSET = 17  # LayerNormalization needs 17; Gelu needs 20 (older opsets get the Erf form)
MIN_OPSET, MAX_OPSET = 13, 21
MAX_ONNX_BYTES = 1 << 30  # from_onnx refuses larger files before parsing them
PRODUCER = "medgrad"


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the export extra is missing
        raise ArgumentError(
            "ONNX export needs the onnx package: pip install medgrad[export]"
        ) from exc
    return onnx


@dataclass
class _Graph:
    """What the builders append to: nodes, initializers (state_dict names kept), and for shape
    bookkeeping the model's arrays; `fresh` makes unique value names."""

    onnx: object
    opset: int
    arrays: deploy._Arrays
    nodes: list = field(default_factory=list)
    initializers: dict = field(default_factory=dict)
    count: int = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}:{self.count}"

    def node(self, op: str, inputs: list[str], hint: str = "", **attrs) -> str:
        """Append one node with one output; returns the output's name."""
        out = self.fresh(hint or op)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def weight(self, name: str) -> str:
        """A state_dict array as an initializer of the same name (float32)."""
        if name not in self.initializers:
            array = np.asarray(self.arrays[name], dtype=np.float32)
            self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def const(self, array, hint: str) -> str:
        """A constant (not a weight): initializer named "const/<hint>:<k>"."""
        name = self.fresh(f"const/{hint}")
        self.initializers[name] = self.onnx.numpy_helper.from_array(np.asarray(array), name)
        return name


# Each builder: (graph, spec, prefix, x name, x sample (1, c, ...)) -> y name. The sample is the
# layer's input for a batch of one (deploy's NumPy forward gives each output's shape).


def _conv(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    k = list(spec["kernel_size"])
    inputs = [x, g.weight(prefix + "weight")] + (
        [g.weight(prefix + "bias")] if spec["bias"] else []
    )
    pads = list(spec["padding"]) * 2  # ONNX: all begins, then all ends
    attrs = dict(kernel_shape=k, strides=list(spec["stride"]), pads=pads)
    if spec["type"].startswith("ConvTranspose"):
        return g.node("ConvTranspose", inputs, output_padding=list(spec["output_padding"]), **attrs)
    return g.node("Conv", inputs, **attrs)


def _linear(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    inputs = [x, g.weight(prefix + "weight")] + (
        [g.weight(prefix + "bias")] if spec["bias"] else []
    )
    return g.node("Gemm", inputs, transB=1)


def _pool(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    attrs = dict(
        kernel_shape=list(spec["kernel_size"]),
        strides=list(spec["stride"]),
        pads=list(spec["padding"]) * 2,
    )
    if spec["type"].startswith("Max"):
        return g.node("MaxPool", [x], **attrs)  # padding is -inf in both
    return g.node("AveragePool", [x], count_include_pad=1, **attrs)


def _adaptive_avg_pool(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    """GlobalAveragePool for output 1; AveragePool when every axis divides evenly (PyTorch's
    windows are then uniform); other sizes have overlapping windows ONNX cannot express."""
    out, spatial = list(spec["output_size"]), sample.shape[2:]
    if all(o == 1 for o in out):
        return g.node("GlobalAveragePool", [x])
    if any(s % o for s, o in zip(spatial, out, strict=True)):
        raise ArgumentError(
            f"{spec['type']}{tuple(out)} on input {tuple(spatial)}: ONNX export needs sizes that "
            "divide evenly (or output_size 1)"
        )
    k = [s // o for s, o in zip(spatial, out, strict=True)]
    return g.node("AveragePool", [x], kernel_shape=k, strides=k)


def _upsample(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    """Resize with PyTorch's coordinate rules: nearest = asymmetric + floor; linear =
    pytorch_half_pixel or align_corners. A size gives Resize's sizes (n, c from Shape(x)), a
    scale factor its scales."""
    mode = "nearest" if spec["mode"] == "nearest" else "linear"
    attrs = {"mode": mode}
    if mode == "nearest":
        attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        align = bool(spec["align_corners"])
        attrs["coordinate_transformation_mode"] = "align_corners" if align else "pytorch_half_pixel"
    nd = sample.ndim - 2
    out, scales = deploy.output_size(sample.shape[2:], spec["size"], spec["scale_factor"])
    if scales[0] is not None:
        scales_ = g.const(np.array([1.0, 1.0, *scales], np.float32), "scales")
        return g.node("Resize", [x, "", scales_], **attrs)
    shape = g.node("Shape", [x])
    nc = g.node("Slice", [shape, g.const(np.array([0]), "start"), g.const(np.array([2]), "end")])
    sizes = g.node("Concat", [nc, g.const(np.array(out[:nd], np.int64), "sizes")], axis=0)
    return g.node("Resize", [x, "", "", sizes], **attrs)


def _gelu(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    """Gelu (opset 20) or its Erf form 0.5 x (1 + erf(x / sqrt 2))."""
    if g.opset >= 20:
        return g.node("Gelu", [x], approximate="none")
    erf = g.node("Erf", [g.node("Div", [x, g.const(np.float32(np.sqrt(2.0)), "sqrt2")])])
    one = g.node("Add", [erf, g.const(np.float32(1.0), "one")])
    return g.node("Mul", [g.node("Mul", [x, one]), g.const(np.float32(0.5), "half")])


def _reduce_mean(g: _Graph, x: str, axes: list[int]) -> str:
    """ReduceMean keeping dims; axes became an input in opset 18."""
    if g.opset >= 18:
        return g.node("ReduceMean", [x, g.const(np.array(axes, np.int64), "axes")], keepdims=1)
    return g.node("ReduceMean", [x], axes=axes, keepdims=1)


def _normalise(g: _Graph, x: str, axes: list[int], eps: float) -> str:
    """(x - mean) / sqrt(var + eps), the statistics over `axes` (biased variance)."""
    centred = g.node("Sub", [x, _reduce_mean(g, x, axes)])
    var = _reduce_mean(g, g.node("Mul", [centred, centred]), axes)
    std = g.node("Sqrt", [g.node("Add", [var, g.const(np.float32(eps), "eps")])])
    return g.node("Div", [centred, std])


def _affine(g: _Graph, y: str, prefix: str, ndim: int) -> str:
    """y * weight + bias per channel: the state_dict's (c,) arrays reshaped to (c, 1, ...)."""
    shape = g.const(np.array([-1, *(1,) * (ndim - 2)], np.int64), "channel")
    scale = g.node("Reshape", [g.weight(prefix + "weight"), shape])
    shift = g.node("Reshape", [g.weight(prefix + "bias"), shape])
    return g.node("Add", [g.node("Mul", [y, scale]), shift])


def _batch_norm(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    """BatchNormalization with the running statistics; without them (batch or instance
    statistics in eval mode) InstanceNormalization or the decomposed formula."""
    c, ndim = sample.shape[1], sample.ndim
    per_instance = spec["type"].startswith("InstanceNorm")
    if spec["affine"]:
        scale, bias = g.weight(prefix + "weight"), g.weight(prefix + "bias")
    else:
        scale = g.const(np.ones(c, np.float32), "ones")
        bias = g.const(np.zeros(c, np.float32), "zeros")
    if spec["track_running_stats"]:
        stats = [g.weight(prefix + "running_mean"), g.weight(prefix + "running_var")]
        return g.node("BatchNormalization", [x, scale, bias, *stats], epsilon=spec["eps"])
    if per_instance:
        return g.node("InstanceNormalization", [x, scale, bias], epsilon=spec["eps"])
    y = _normalise(g, x, [0, *range(2, ndim)], spec["eps"])
    return _affine(g, y, prefix, ndim) if spec["affine"] else y


def _group_norm(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    """Reshape to (n, groups, -1), normalise over the last axis, reshape back, then the
    per-channel weight and bias."""
    grouped = g.node("Reshape", [x, g.const(np.array([0, spec["num_groups"], -1]), "groups")])
    y = _normalise(g, grouped, [2], spec["eps"])
    y = g.node("Reshape", [y, g.node("Shape", [x])])
    return _affine(g, y, prefix, sample.ndim) if spec["affine"] else y


def _layer_norm(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    """LayerNormalization (opset 17) over the trailing normalized_shape, else decomposed."""
    shape = tuple(spec["normalized_shape"])
    axes = list(range(sample.ndim - len(shape), sample.ndim))
    if g.opset >= 17:
        affine = spec["elementwise_affine"]
        scale = g.weight(prefix + "weight") if affine else g.const(np.ones(shape, np.float32), "1")
        inputs = [x, scale] + ([g.weight(prefix + "bias")] if spec["bias"] else [])
        return g.node("LayerNormalization", inputs, axis=axes[0], epsilon=spec["eps"])
    y = _normalise(g, x, axes, spec["eps"])
    if spec["elementwise_affine"]:
        y = g.node("Mul", [y, g.weight(prefix + "weight")])
    return g.node("Add", [y, g.weight(prefix + "bias")]) if spec["bias"] else y


def _sequential(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    names = spec.get("names") or [str(i) for i in range(len(spec["layers"]))]
    for name, child in zip(names, spec["layers"], strict=True):
        x, sample = _build(g, child, f"{prefix}{name}.", x, sample)
    return x


def _residual(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    """Add(body(x), shortcut(x)) then the activation, with deploy.residual's state names."""
    y = _sequential(g, spec["body"], prefix, x, sample)
    if spec["shortcut"] is not None:
        x = _build(g, spec["shortcut"], prefix + "downsample.", x, sample)[0]
    y = g.node("Add", [y, x])
    if spec["activation"] is None:
        return y
    body_out = deploy.sequential(sample, spec["body"], g.arrays, prefix)
    return _build(g, spec["activation"], prefix + "activation.", y, body_out)[0]


def _skip_connection(g: _Graph, spec: dict, prefix: str, x: str, sample) -> str:
    """Concat([x, body(x)], axis=dim), Add or Mul by spec["mode"], with deploy.skip_connection's
    state names (the body's children directly under the block)."""
    y = _sequential(g, spec["body"], prefix, x, sample)
    if spec["mode"] == "cat":
        return g.node("Concat", [x, y], axis=spec["dim"])
    return g.node("Add" if spec["mode"] == "add" else "Mul", [x, y])


def _simple(op: str, **attrs) -> Callable[..., str]:
    """A builder for a one-node layer without weights."""
    return lambda g, spec, prefix, x, sample: g.node(op, [x], **attrs)


# The exporter's one table: spec type -> builder. A new layer type is one entry here plus, for
# from_onnx, its ONNX ops in IMPORTABLE_OPS.
ONNX_BUILDERS: dict[str, Callable[..., str]] = {
    "Conv2d": _conv,
    "Conv3d": _conv,
    "ConvTranspose2d": _conv,
    "ConvTranspose3d": _conv,
    "Linear": _linear,
    "MaxPool2d": _pool,
    "AvgPool2d": _pool,
    "MaxPool3d": _pool,
    "AvgPool3d": _pool,
    "AdaptiveAvgPool2d": _adaptive_avg_pool,
    "AdaptiveAvgPool3d": _adaptive_avg_pool,
    "Upsample": _upsample,
    "ReLU": _simple("Relu"),
    "Sigmoid": _simple("Sigmoid"),
    "Tanh": _simple("Tanh"),
    "LeakyReLU": lambda g, spec, p, x, s: g.node("LeakyRelu", [x], alpha=spec["negative_slope"]),
    "GELU": _gelu,
    "Flatten": _simple("Flatten", axis=1),
    "Dropout": _simple("Identity"),  # identity at inference
    "Identity": _simple("Identity"),
    "BatchNorm1d": _batch_norm,
    "BatchNorm2d": _batch_norm,
    "BatchNorm3d": _batch_norm,
    "InstanceNorm2d": _batch_norm,
    "InstanceNorm3d": _batch_norm,
    "GroupNorm": _group_norm,
    "LayerNorm": _layer_norm,
    "Sequential": _sequential,
    "Residual": _residual,
    "SkipConnection": _skip_connection,
}

# Every op type the builders emit: from_onnx refuses a graph with any other.
IMPORTABLE_OPS = frozenset(
    "Conv ConvTranspose Gemm MaxPool AveragePool GlobalAveragePool Resize Shape Slice Concat "
    "Relu Sigmoid Tanh LeakyRelu Gelu Erf Div Add Mul Sub Sqrt ReduceMean Reshape Flatten "
    "Identity BatchNormalization InstanceNormalization LayerNormalization".split()
)


def _build(g: _Graph, spec: dict, prefix: str, x: str, sample) -> tuple[str, np.ndarray]:
    """(output name, output sample) of one layer."""
    kind = spec.get("type")
    if kind not in ONNX_BUILDERS:
        raise ArgumentError(f"layer type {kind!r} has no ONNX export (see ONNX_BUILDERS)")
    y = ONNX_BUILDERS[kind](g, spec, prefix, x, sample)
    return y, deploy.FORWARD[kind](sample, spec, g.arrays, prefix)


def _as_checkpoint(model) -> Checkpoint:
    """A Checkpoint from a model file path, a Checkpoint, or an engine.nn model."""
    if isinstance(model, Checkpoint):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_checkpoint(model)
    if not hasattr(model, "spec") or not hasattr(model, "state_dict"):
        raise ArgumentError(f"to_onnx: expected a model, a Checkpoint or a path, got {model!r}")
    return Checkpoint(Path("<model>"), None, model.spec(), model.state_dict())


def _input_shape(ckpt: Checkpoint, input_shape) -> tuple[int, ...]:
    """(c, *spatial): given, or from the file's preprocessing (in_channels, input_size)."""
    if input_shape is None:
        pre = ckpt.preprocessing or {}
        if "input_size" not in pre:
            raise ArgumentError(
                f"{ckpt.path}: give input_shape=(c, h, w): the file records no input_size"
            )
        size = pre["input_size"]
        size = list(size) if isinstance(size, (list, tuple)) else [size, size]
        input_shape = (int(pre.get("in_channels", 1)), *size)
    shape = tuple(int(v) for v in input_shape)
    if len(shape) < 1 or any(v < 1 for v in shape):
        raise ArgumentError(f"input_shape must be positive (c, *spatial), got {input_shape}")
    return shape


def to_onnx(
    model,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    input_shape=None,
) -> Path:
    """Write `model` (an engine.nn model, a Checkpoint or a model file path) as an ONNX file.

    Graph input "input" float32 (n, *input_shape) (n symbolic "batch" when dynamic_batch, else 1),
    output "logits"; initializers keep the state_dict names. input_shape (c, h, w) or (c, d, h,
    w) defaults to the file's preprocessing. metadata_props: medgrad.spec, medgrad.classes,
    medgrad.preprocessing (JSON). The result passes onnx.checker.check_model(full_check=True).
    """
    onnx = _onnx()
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ArgumentError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    ckpt = _as_checkpoint(model)
    if not ckpt.spec:
        raise ArgumentError(f"{ckpt.path}: holds no layer spec (a custom Module): cannot export")
    shape = _input_shape(ckpt, input_shape)
    g = _Graph(onnx, int(opset), deploy._Arrays(ckpt.weights, ckpt.path))
    sample = np.zeros((1, *shape), np.float32)
    y, out = _build(g, ckpt.spec, "", "input", sample)
    g.nodes.append(onnx.helper.make_node("Identity", [y], ["logits"], name="logits"))
    batch = "batch" if dynamic_batch else 1
    f32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes,
        "medgrad",
        [onnx.helper.make_tensor_value_info("input", f32, [batch, *shape])],
        [onnx.helper.make_tensor_value_info("logits", f32, [batch, *out.shape[1:]])],
        initializer=list(g.initializers.values()),
    )
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", int(opset))], producer_name=PRODUCER
    )
    proto.ir_version = min(proto.ir_version, 9)  # readable by older runtimes too
    meta = {
        "medgrad.spec": ckpt.spec,
        "medgrad.classes": ckpt.classes,
        "medgrad.preprocessing": ckpt.preprocessing or {},
    }
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in meta.items()})
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    try:
        onnx.save_model(proto, path)
    except OSError as exc:
        raise SerializationError(f"{path}: write failed ({exc})") from exc
    return path


# ---- import ----


def _fail(path, why: str) -> SerializationError:
    return SerializationError(f"{path}: not a medgrad ONNX export ({why})")


def _read_proto(path: Path):
    """The parsed ModelProto, its size checked before reading; any parser failure is ours."""
    onnx = _onnx()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SerializationError(f"{path}: cannot read ({exc})") from exc
    if size > MAX_ONNX_BYTES:
        raise _fail(path, f"{size} bytes, more than the {MAX_ONNX_BYTES} allowed")
    try:
        data = path.read_bytes()
        proto = onnx.ModelProto()
        proto.ParseFromString(data)  # protobuf: bounded by the file's size, no external data
    except OSError as exc:
        raise SerializationError(f"{path}: cannot read ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 -- hostile bytes trip protobuf's decoder anywhere
        raise _fail(path, f"unparsable protobuf, {type(exc).__name__}") from exc
    return proto


def _initializer(path, tensor, expected: tuple[int, ...] | None) -> np.ndarray:
    """A float32 initializer as an array; its declared shape is checked against the bytes it
    holds (and against `expected`) before anything is allocated."""
    from onnx import TensorProto, numpy_helper

    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims) or (expected is not None and dims != expected):
        raise _fail(path, f"initializer {tensor.name!r} has shape {dims}, expected {expected}")
    if tensor.data_type != TensorProto.FLOAT or tensor.data_location == TensorProto.EXTERNAL:
        raise _fail(path, f"initializer {tensor.name!r} is not inline float32")
    count = int(np.prod(dims, dtype=object))
    held = len(tensor.raw_data) // 4 if tensor.raw_data else len(tensor.float_data)
    if count != held:
        raise _fail(path, f"initializer {tensor.name!r} declares {count} values, holds {held}")
    return np.array(numpy_helper.to_array(tensor), dtype=np.float32)


def from_onnx(path: str | os.PathLike) -> Checkpoint:
    """Read back an ONNX file that to_onnx wrote: a Checkpoint (spec from medgrad.spec, weights
    from the initializers, classes, preprocessing) that engine.deploy.NumpyModel runs and
    engine.checkpoint.build_model turns into an engine.nn model.

    Anything else (truncated or hostile bytes, op types to_onnx never emits, initializers whose
    shape differs from what the spec builds, external data, huge declared sizes) raises
    SerializationError naming the file; nothing larger than the file is allocated.
    """
    path = Path(path)
    proto = _read_proto(path)
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        spec = json.loads(props["medgrad.spec"])
        classes = json.loads(props.get("medgrad.classes", "null"))
        preprocessing = json.loads(props.get("medgrad.preprocessing", "{}"))
    except (KeyError, ValueError, RecursionError) as exc:
        raise _fail(path, f"medgrad metadata missing or unreadable, {type(exc).__name__}") from exc
    unknown = sorted({n.op_type for n in proto.graph.node} - IMPORTABLE_OPS)
    if unknown:
        raise _fail(path, f"op types {unknown} are not ones medgrad exports")
    expected = _expected_shapes(path, spec)
    weights = {}
    for tensor in proto.graph.initializer:
        if tensor.name.startswith("const/"):
            continue
        if tensor.name not in expected:
            raise _fail(path, f"unexpected initializer {tensor.name!r}")
        weights[tensor.name] = _initializer(path, tensor, expected[tensor.name])
    for name, shape in expected.items():
        if name not in weights:
            if not name.endswith("num_batches_tracked"):  # an int counter, not exported
                raise _fail(path, f"initializer {name!r} is missing")
            weights[name] = np.zeros(shape, np.int64)
    classes = classes if isinstance(classes, list) else None
    preprocessing = preprocessing if isinstance(preprocessing, dict) else {}
    return Checkpoint(path, None, spec, weights, preprocessing, classes)


def _declared_parameters(spec) -> int:
    """A bound on the parameter count a spec declares (weights of convs, dense, norms), summed
    over nested specs, without building anything."""
    if isinstance(spec, list):
        return sum(_declared_parameters(s) for s in spec)
    if not isinstance(spec, dict):
        return 0
    sizes = [spec.get(k) for k in ("in_channels", "out_channels", "in_features", "out_features")]
    sizes += list(spec.get("kernel_size") or []) if str(spec.get("type")).startswith("Conv") else []
    sizes += [spec.get(k) for k in ("num_features", "num_channels")]
    sizes += list(spec.get("normalized_shape") or [])
    total = 1
    for v in sizes:
        total *= v if isinstance(v, int) and v > 0 else 1
    return total + sum(
        _declared_parameters(v) for v in spec.values() if isinstance(v, (dict, list))
    )


def _expected_shapes(path: Path, spec) -> dict[str, tuple[int, ...]]:
    """state_dict name -> shape of the model the spec builds (engine.nn, imported here only);
    refused before building when the spec declares more parameters than the file could hold."""
    from engine import nn

    try:
        declared = _declared_parameters(spec)
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:  # hostile arguments
        raise _fail(path, f"medgrad.spec is malformed, {type(exc).__name__}") from exc
    size = path.stat().st_size
    if declared > size:  # every parameter is >= 1 byte of the file (4, in fact)
        raise _fail(path, f"the spec declares ~{declared} parameters, the file has {size} bytes")
    try:
        model = nn.from_spec(spec)
    except Exception as exc:  # noqa: BLE001 -- hostile arguments can fail in any constructor
        raise _fail(path, f"medgrad.spec does not build a model, {type(exc).__name__}") from exc
    return {name: tuple(a.shape) for name, a in model.state_dict().items()}
