"""Model files and training checkpoints: one `.npz` format without pickle, hashed, written atomically.

A file holds, as plain arrays (read back with allow_pickle=False through engine.safeio):
- "meta.json"   UTF-8 JSON as uint8: format and version, the model's config (registry name and
                arguments), its layer spec (engine.nn's `model.spec()`, which engine.nn.from_spec
                rebuilds and engine.deploy runs NumPy-only), the preprocessing settings, class names, optimizer name and settings, training state
                (epoch, history, RNG states) and the name, dtype and shape of every array below;
- "weights/<name>"    the model's state_dict: parameters and buffers ("weights/0.weight", ...);
- "optimizer/<name>"  the optimizer's buffers (momentum, Adam moments, step count), if saved;
- "sha256"      hex digest (uint8) of meta.json and of every array's name, dtype, shape and bytes.
Loading checks the digest and the array list before returning anything, so a truncated, tampered,
pickled or foreign file raises SerializationError naming the file and nothing in it is executed.
Version 1 files stored a flat layer list ("layers") instead of the spec; they still load (see
_spec_from_v1). This module imports no engine.nn at top level, so engine.deploy stays NumPy-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import MedgradError, SerializationError
from engine.safeio import load_npz

FORMAT = "medgrad-model"
VERSION = 2  # 2: "spec" (engine.nn's layer protocol) replaced version 1's "layers" list
READABLE_VERSIONS = (1, 2)
MAX_META_BYTES = 16 << 20  # the JSON part: history and settings, never megabytes
# bit generators whose state is plain integers (JSON-safe); default_rng gives PCG64
RNG_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64")


@dataclass
class Checkpoint:
    """The contents of a model file, verified. Arrays are NumPy, on the CPU."""

    path: Path
    model_config: dict | None  # {"name": "seed_cnn", "num_classes": 2, ...} or None
    spec: dict | None  # model.spec(): {"type": "Sequential", "layers": [...]}, None if it has none
    weights: dict[str, np.ndarray]
    preprocessing: dict = field(default_factory=dict)
    classes: list[str] | None = None
    optimizer: dict | None = None  # {"name": "adam", "settings": {...}}
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)
    train_state: dict = field(default_factory=dict)  # epoch, history, rng states, ...


# ---- writing ----


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file so that a crash at any moment leaves either the old file or the new one.

    The bytes go to a temporary file in the same directory (so the rename never crosses file
    systems), which is flushed and fsynced, then os.replace()d over `path`; the directory is fsynced
    so the rename itself survives a power cut. Any failure removes the temporary and raises
    SerializationError naming `path`.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SerializationError(f"{path}: cannot create a file in {path.parent} ({exc})") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise SerializationError(f"{path}: write failed ({exc})") from exc
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Best effort: some file systems (and Windows) cannot open a directory for fsync."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed atomic_write left in `directory`; returns what was removed.
    Call it when a run starts, never while another process may be saving into the directory."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _digest(meta_bytes: bytes, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the JSON bytes and, in name order, each array's name, dtype, shape and data."""
    h = hashlib.sha256(meta_bytes)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def model_spec(model) -> dict | None:
    """model.spec() when every layer of the model is in engine.nn.LAYERS, else None (a custom
    Module: its weights are still saved, and the code that built it rebuilds it)."""
    from engine.errors import ArgumentError

    try:
        return model.spec()
    except ArgumentError:
        return None


def _spec_from_v1(layers: list | None, weights: dict[str, np.ndarray]) -> dict | None:
    """The Sequential spec of a version-1 layer list, whose entries carried only what inference
    needs: conv/linear sizes come from the weight shapes, Dropout's p (unused at inference) is
    not stored and becomes 0.5."""
    if layers is None:
        return None
    specs = []
    for i, entry in enumerate(layers):
        kind = entry["type"]
        if kind in ("Conv2d", "Linear"):
            W = weights[entry["weight"]]
            if W.ndim != (4 if kind == "Conv2d" else 2):
                raise KeyError(f"layer {i} ({kind}): weight {entry['weight']} has shape {W.shape}")
            sizes = (
                {"out_channels": W.shape[0], "in_channels": W.shape[1]}
                if kind == "Conv2d"
                else {"out_features": W.shape[0], "in_features": W.shape[1]}
            )
            spec = {"type": kind, **sizes, "bias": entry.get("bias") is not None}
            if kind == "Conv2d":
                spec.update(kernel_size=list(W.shape[2:]), stride=entry["stride"])
                spec.update(padding=entry["padding"])
        elif kind in ("MaxPool2d", "AvgPool2d"):
            spec = {"type": kind, **{k: entry[k] for k in ("kernel_size", "stride", "padding")}}
        elif kind == "Dropout":
            spec = {"type": kind, "p": 0.5}
        else:
            spec = {"type": kind}  # activations, Flatten; an unknown type is reported by its user
        specs.append(spec)
    return {"type": "Sequential", "layers": specs}


def rng_state(rng: np.random.Generator) -> dict:
    """A JSON-safe copy of a Generator's bit-generator state."""
    state = rng.bit_generator.state
    if state["bit_generator"] not in RNG_BIT_GENERATORS:
        raise SerializationError(f"cannot save RNG state of {state['bit_generator']}")
    return json.loads(json.dumps(state))


def rng_from_state(state: dict) -> np.random.Generator:
    """The Generator whose next draws continue exactly where the saved one stopped."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in RNG_BIT_GENERATORS:
        raise SerializationError(f"unknown RNG state (bit generator {name!r})")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def optimizer_settings(optimizer) -> dict:
    """{"name": "sgd" | "gd" | "adam", "settings": the constructor's hyper-parameters}."""
    name = type(optimizer).__name__.lower()
    keys = {
        "gd": (),
        "sgd": ("momentum", "nesterov", "weight_decay"),
        "adam": ("betas", "eps", "weight_decay"),
    }.get(name, ())
    settings = {"lr": optimizer.lr, **{k: getattr(optimizer, k) for k in keys}}
    return {"name": name, "settings": json.loads(json.dumps(settings))}


def save_checkpoint(
    path: str | os.PathLike,
    model,
    *,
    preprocessing: dict | None = None,
    classes: list[str] | None = None,
    optimizer=None,
    train_state: dict | None = None,
) -> Path:
    """Write `model` (and, for resuming, the optimizer and training state) to `path` atomically.

    preprocessing: how inputs were prepared (input_size, channels, windowing ...), so inference
    can prepare new images the same way. train_state: JSON-safe dict (epoch, history, RNG states).
    """
    import engine

    weights = model.state_dict()
    arrays = {f"weights/{k}": v for k, v in weights.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "engine_version": engine.__version__,
        "model": getattr(model, "config", None),
        "spec": model_spec(model),
        "preprocessing": preprocessing or {},
        "classes": list(classes) if classes is not None else None,
        "optimizer": optimizer_settings(optimizer) if optimizer is not None else None,
        "train_state": train_state or {},
    }
    if optimizer is not None:
        arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise SerializationError(f"{path}: {name} holds Python objects, which need pickle")
    meta["arrays"] = {name: [a.dtype.str, list(a.shape)] for name, a in arrays.items()}
    try:
        meta_bytes = json.dumps(meta, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{path}: metadata is not plain JSON ({exc})") from exc
    payload = {
        "meta.json": np.frombuffer(meta_bytes, dtype=np.uint8),
        **arrays,
        "sha256": np.frombuffer(_digest(meta_bytes, arrays).encode(), dtype=np.uint8),
    }
    return atomic_write(path, lambda f: np.savez(f, **payload))


# ---- reading ----


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a model file; SerializationError naming `path` for anything wrong."""
    path = Path(path)
    try:
        raw = load_npz(path, error=SerializationError)
    except MedgradError:
        raise
    except Exception as exc:  # noqa: BLE001 -- hostile bytes can trip any zipfile parser path
        raise SerializationError(
            f"{path}: not a readable model file ({type(exc).__name__})"
        ) from exc
    for key in ("meta.json", "sha256"):
        if key not in raw or raw[key].dtype != np.uint8 or raw[key].ndim != 1:
            raise SerializationError(f"{path}: not a medgrad model file (no valid {key!r})")
    meta_bytes = raw.pop("meta.json").tobytes()
    stored = raw.pop("sha256").tobytes().decode("ascii", errors="replace")
    if len(meta_bytes) > MAX_META_BYTES:
        raise SerializationError(f"{path}: metadata of {len(meta_bytes)} bytes is too large")
    if _digest(meta_bytes, raw) != stored:
        raise SerializationError(f"{path}: SHA-256 mismatch: the file was modified or damaged")
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SerializationError(f"{path}: not a medgrad model file (format {FORMAT!r} expected)")
    if meta.get("version") not in READABLE_VERSIONS:
        raise SerializationError(
            f"{path}: format version {meta.get('version')}, expected one of {READABLE_VERSIONS}"
        )
    listed = meta.get("arrays", {})
    if set(listed) != set(raw):
        raise SerializationError(
            f"{path}: arrays {sorted(set(raw) ^ set(listed))} differ from the metadata's list"
        )
    for name, (dtype, shape) in listed.items():
        if raw[name].dtype.str != dtype or list(raw[name].shape) != shape:
            raise SerializationError(f"{path}: {name} is not {dtype} {shape} as listed")
    weights = {k[8:]: v for k, v in raw.items() if k.startswith("weights/")}
    try:
        spec = (
            meta.get("spec") if meta["version"] > 1 else _spec_from_v1(meta.get("layers"), weights)
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise SerializationError(f"{path}: version-1 layer list is malformed ({exc!r})") from exc
    if spec is not None and not (isinstance(spec, dict) and "type" in spec):
        raise SerializationError(f"{path}: layer spec is not a dict with a 'type'")
    return Checkpoint(
        path=path,
        model_config=meta.get("model"),
        spec=spec,
        weights=weights,
        preprocessing=meta.get("preprocessing") or {},
        classes=meta.get("classes"),
        optimizer=meta.get("optimizer"),
        optimizer_state={k[10:]: v for k, v in raw.items() if k.startswith("optimizer/")},
        train_state=meta.get("train_state") or {},
    )


def build_model(ckpt: Checkpoint):
    """Rebuild the model and load the weights: from its registry name and arguments (models.get)
    when stored, else from its layer spec (engine.nn.from_spec)."""
    import models
    from engine import nn

    config = dict(ckpt.model_config or {})
    name = config.pop("name", None)
    if name is None and ckpt.spec is None:
        raise SerializationError(
            f"{ckpt.path}: no model name and no layer spec stored; rebuild the model yourself"
        )
    what = repr(name) if name is not None else f"from its spec ({ckpt.spec.get('type')})"
    try:
        model = models.get(name, **config) if name is not None else nn.from_spec(ckpt.spec)
        model.load_state_dict(ckpt.weights)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise SerializationError(f"{ckpt.path}: weights do not fit model {what}: {exc}") from exc
    return model


def load_model(path: str | os.PathLike):
    """(model in eval mode, Checkpoint) from a model file."""
    ckpt = load_checkpoint(path)
    return build_model(ckpt).eval(), ckpt


def build_optimizer(ckpt: Checkpoint, params):
    """The optimizer saved in `ckpt`, with its buffers and step count restored, over `params`."""
    from engine import optim

    if ckpt.optimizer is None:
        raise SerializationError(f"{ckpt.path}: holds no optimizer state")
    name, settings = ckpt.optimizer["name"], dict(ckpt.optimizer["settings"])
    if name not in optim.OPTIMIZERS:
        raise SerializationError(f"{ckpt.path}: unknown optimizer {name!r}")
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    opt = optim.OPTIMIZERS[name](params, **settings)
    opt.load_state_dict(ckpt.optimizer_state)
    return opt
