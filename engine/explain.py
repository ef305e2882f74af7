"""Why did the model say that? Vanilla-gradient saliency and Grad-CAM, with the engine's own autograd.

Both work on any model of engine.nn layers, on images (n, c, h, w) and volumes (n, c, d, h, w);
Grad-CAM keeps the output of a chosen layer, named by its dotted module name ("layer4",
"layer2.0.conv1") or, in a Sequential, its index, during the one forward pass and reads its
gradient after one backward pass.
- saliency: |d score / d x|, the largest over channels: which pixels move the score most.
- Grad-CAM (Selvaraju et al. 2017): weights a_k = mean over the cells of d score / d A_k for the
  feature maps A of a conv layer, map = ReLU(sum_k a_k A_k), resampled (linear per axis: bilinear,
  trilinear) to the input grid.
The explained score: for a classifier (logits (n, k)) the logit of class c (before softmax), as
in the Grad-CAM paper; for a segmentation model (logits (n, k, *spatial)) the sum of class c's
logits over a region, by default the voxels predicted as c (Vinogradova et al. 2020's
segmentation Grad-CAM; pytorch-grad-cam's SemanticSegmentationTarget).
Which layers are convolutions, and where their cells sit on the input, come from each layer's
`geometry()` and each container's `path()` (engine.nn's layer protocol), so new spatial layers and
containers (Residual, SkipConnection) need no change here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from engine import nn
from engine.errors import ArgumentError, DataError
from engine.tensor import Tensor


def _layers(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"explain needs an nn.Sequential model, got {type(model).__name__}")
    return model.layers


def conv_layers(model: nn.Module) -> list[int]:
    """Indices of the convolution layers (geometry kind "conv") of a Sequential model."""
    return [i for i, layer in enumerate(_layers(model)) if _kind(layer) == "conv"]


def conv_layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every convolution (geometry kind "conv") in the model, depth first:
    ["0", "3"] for seed_cnn, ["conv1", "layer1.0.conv1", ...] for a ResNet."""
    return [name for name, m in model.named_modules() if name and _kind(m) == "conv"]


def _kind(layer: nn.Module) -> str | None:
    geometry = layer.geometry()
    return geometry.kind if geometry is not None else None


def _targets(logits: np.ndarray, target) -> np.ndarray:
    """Class per image: `target` (int or (n,) ints), or the predicted class when None."""
    n, k = logits.shape
    t = logits.argmax(axis=1) if target is None else np.broadcast_to(np.asarray(target), (n,))
    if t.min() < 0 or t.max() >= k:
        raise ArgumentError(f"target class must lie in 0..{k - 1}, got {t}")
    return t.astype(np.int64)


def _segmentation_targets(logits: np.ndarray, target) -> np.ndarray:
    """Class per volume of segmentation logits (n, k, *spatial): `target` (int or (n,) ints), or
    the foreground class (1..k-1) predicted on the most voxels (the lowest on a tie; class 1 when
    none is predicted); k = 1 (one sigmoid channel) explains channel 0."""
    n, k = logits.shape[:2]
    if target is not None:
        t = np.broadcast_to(np.asarray(target), (n,))
        if t.min() < 0 or t.max() >= k:
            raise ArgumentError(f"target class must lie in 0..{k - 1}, got {t}")
        return t.astype(np.int64)
    if k == 1:
        return np.zeros(n, np.int64)
    predicted = logits.argmax(axis=1).reshape(n, -1)
    counts = np.stack([(predicted == c).sum(axis=1) for c in range(1, k)], axis=1)  # (n, k-1)
    return counts.argmax(axis=1).astype(np.int64) + 1


def _region(logits: np.ndarray, t: np.ndarray, region) -> np.ndarray:
    """Boolean (n, *spatial): the voxels whose class-t logits are summed. Default: those
    predicted as t (argmax over classes; logit > 0 for one sigmoid channel)."""
    n, k, *spatial = logits.shape
    if region is None:
        if k == 1:
            return logits[:, 0] > 0
        return logits.argmax(axis=1) == t.reshape(n, *([1] * len(spatial)))
    region = np.asarray(region)
    if region.dtype.kind not in "biu":
        raise ArgumentError(f"region must be a boolean or 0/1 mask, got {region.dtype}")
    if region.shape == tuple(spatial):
        region = np.broadcast_to(region, (n, *spatial))
    if region.shape != (n, *spatial):
        raise ArgumentError(
            f"region of shape {region.shape} does not fit the output: expected "
            f"{tuple(spatial)} or {(n, *spatial)}"
        )
    return region.astype(bool)


def score_weights(logits: np.ndarray, target=None, region=None) -> tuple[np.ndarray, np.ndarray]:
    """(t, w): the explained class per input, int64 (n,), and w = d score / d logits (the
    logits' shape and dtype), so that score_i = sum(w_i * logits_i).

    Classifier logits (n, k): w is one-hot at t (target, or the predicted class). Segmentation
    logits (n, k, *spatial): w is class t's channel set to the region mask (region: (*spatial)
    or (n, *spatial) boolean; default the voxels predicted as t, see _segmentation_targets).
    The region is fixed by the forward pass: the score is linear in the logits.
    """
    n = len(logits)
    w = np.zeros_like(logits)
    if logits.ndim == 2:
        if region is not None:
            raise ArgumentError(
                f"region applies to segmentation outputs (n, k, *spatial); this model gives "
                f"class logits {logits.shape}"
            )
        t = _targets(logits, target)
        w[np.arange(n), t] = 1
        return t, w
    t = _segmentation_targets(logits, target)
    w[np.arange(n), t] = _region(logits, t, region)
    return t, w


def class_score(model: nn.Module, x: Tensor, target, region=None) -> Tensor:
    """score (n,): the quantity both maps explain. For class logits (n, k) the logit of class
    target[i] for input i; for segmentation logits (n, k, *spatial) the sum of class target[i]'s
    logits over the region (default: the voxels predicted as that class; score_weights)."""
    logits = model(x)
    if logits.ndim == 2 and region is None:
        t = _targets(logits.data, target)
        return logits[np.arange(len(t)), t]
    _, w = score_weights(logits.data, target, region)
    return (logits * Tensor(w)).sum(axis=tuple(range(1, logits.ndim)))


def saliency(
    model: nn.Module, x: np.ndarray, target=None, region=None
) -> tuple[np.ndarray, np.ndarray]:
    """Vanilla gradient saliency of images x (n, c, h, w) or volumes x (n, c, d, h, w).

    Returns (map, grad): map float (n, *spatial) = max over channels of |d score / d x|, and the
    raw gradient grad (x's shape). target: class index (int or (n,)), None = the predicted class
    (segmentation: the foreground class predicted on the most voxels). region: segmentation
    only, the voxels whose logits are summed (default: those predicted as the target class).
    Model parameters' .grad are left cleared.
    """
    was_training = model.training
    model.eval()
    try:
        xt = Tensor(np.asarray(x), requires_grad=True)
        class_score(model, xt, target, region).sum().backward()  # inputs are independent: one pass
        grad = xt.grad
    finally:
        model.zero_grad()
        model.train(was_training)
    return np.abs(grad).max(axis=1), grad


def _compose(geometry: nn.Geometry | None, scale: list[float], offset: list[float]) -> None:
    """Fold one layer's centre map into the running (scale, offset) per axis, in place."""
    for a, (s, o) in enumerate(geometry.centre_map() if geometry is not None else []):
        offset[a] += scale[a] * o
        scale[a] *= s


def _centres(layers: list[nn.Module], upto: int) -> tuple[tuple[float, float], ...]:
    """(scale, offset) per spatial axis such that feature cell u of layer `upto`'s output is
    centred on input pixel scale * u + offset: composed from each spatial layer's
    geometry().centre_map() (for a conv or pool, input = s * out - p + (k - 1) / 2); layers
    without geometry keep the grid. As many axes as the layers' kernels have (2 when none)."""
    geometries = [layer.geometry() for layer in layers[: upto + 1]]
    nd = next((len(g.kernel_size) for g in geometries if g is not None), 2)
    scale, offset = [1.0] * nd, [0.0] * nd
    for geometry in geometries:
        _compose(geometry, scale, offset)
    return tuple(zip(scale, offset, strict=True))


def _interpolation(n_out: int, n_in: int, scale: float, offset: float) -> np.ndarray:
    """(n_out, n_in) linear interpolation matrix: output pixel o reads fractional source cell
    (o - offset) / scale, clamped to the first and last cell."""
    f = np.clip((np.arange(n_out) - offset) / scale, 0, n_in - 1)  # fractional source index
    i0 = np.minimum(np.floor(f).astype(int), max(n_in - 2, 0))
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), i0] = 1 - (f - i0)
    if n_in > 1:
        w[np.arange(n_out), i0 + 1] += f - i0
    return w


def _resample(maps: np.ndarray, size: tuple[int, ...], *axes: tuple[float, float]) -> np.ndarray:
    """Linear resampling per axis (bilinear in 2-D, trilinear in 3-D: the same separable
    weights) of maps (n, *feature grid) onto the input's grid (n, *size), each feature cell
    placed at its receptive-field centre (axes: one (scale, offset) per spatial axis); clamped
    at the edges."""
    if not len(size) == len(axes) == maps.ndim - 1:
        raise ValueError(f"_resample: maps {maps.shape}, size {size} and {len(axes)} axes differ")
    out = maps
    for a, (n_out, (scale, offset)) in enumerate(zip(size, axes, strict=True)):
        w = _interpolation(n_out, out.shape[1 + a], scale, offset)
        out = np.moveaxis(np.tensordot(w, out, axes=([1], [1 + a])), 0, 1 + a)
    return out


def _contains_conv(module: nn.Module) -> bool:
    return any(_kind(m) == "conv" for m in module.modules())


def _target_name(model: nn.Module, layer: int | str | None) -> str:
    """The dotted name of the module whose output Grad-CAM explains. An int is an index into a
    Sequential and must be a conv (the old API); a name must be a module that is or contains a
    conv; None: the last child on the model's path that contains one, other than the model's
    last child (its output is the logits: a U-Net's final 1x1 conv gives way to its last
    decoder block). A conv directly followed by a ReLU on its container's path gives way to
    that ReLU (the maps the network reads on)."""
    if isinstance(layer, int) and not isinstance(layer, bool):
        convs = conv_layers(model)
        if layer not in convs:
            raise ArgumentError(f"layer {layer} is not a Conv2d; conv layers are at {convs}")
        name = list(model.named_children())[layer][0]
    elif layer is None:
        path = model.path() or []
        candidates = [n for n, child in path if _contains_conv(child)]
        if not candidates:
            raise ArgumentError(
                "Grad-CAM needs a Conv2d layer; this model has none (conv layers are at [])"
            )
        if len(candidates) > 1 and candidates[-1] == path[-1][0]:
            candidates.pop()  # the head whose output is the logits (a U-Net's 1x1 final_conv)
        name = candidates[-1]
    else:
        modules = dict(model.named_modules())
        if layer not in modules or not layer or not _contains_conv(modules[layer]):
            raise ArgumentError(
                f"layer {layer!r} is not a module with a convolution; conv layers are "
                f"{conv_layer_names(model)}"
            )
        name = layer
    return _after_relu(model, name)


def grad_cam_layer(model: nn.Module, layer: int | str | None = None) -> str:
    """The dotted name of the module grad_cam(model, x, layer=layer) explains; ArgumentError
    when `layer` is not a conv (index) or a module holding one (name)."""
    return _target_name(model, layer)


def _after_relu(model: nn.Module, name: str) -> str:
    """`name`, or the ReLU right after it on its container's path when `name` is a conv."""
    parent_name, _, own = name.rpartition(".")
    parent = dict(model.named_modules())[parent_name]
    path = parent.path() or []
    names = [n for n, _ in path]
    if own in names and _kind(path[names.index(own)][1]) == "conv":
        i = names.index(own)
        if i + 1 < len(path) and isinstance(path[i + 1][1], nn.ReLU):
            return f"{parent_name}.{names[i + 1]}" if parent_name else names[i + 1]
    return name


def _centres_to(model: nn.Module, name: str, nd: int = 2) -> tuple[tuple[float, float], ...]:
    """(scale, offset) per spatial axis (nd of them) of module `name`'s output cells on the input
    grid, composed along the containers' path() (a Residual's body; a shortcut starts from the
    block's input; a SkipConnection's body returns to its input's grid)."""
    scale, offset = [1.0] * nd, [0.0] * nd

    def whole(module: nn.Module) -> None:
        path = module.path()
        if path is None:
            _compose(module.geometry(), scale, offset)
            return
        for _, child in path:
            whole(child)

    def upto(module: nn.Module, parts: list[str]) -> None:
        path = module.path() or []
        names = [n for n, _ in path]
        if parts[0] in names:
            for _, before in path[: names.index(parts[0])]:
                whole(before)
            child = path[names.index(parts[0])][1]
        else:  # not on the path: a branch (Residual's shortcut) reading the container's input
            child = dict(module.named_children())[parts[0]]
        if len(parts) == 1:
            whole(child)
        else:
            upto(child, parts[1:])

    upto(model, name.split("."))
    return tuple(zip(scale, offset, strict=True))


@contextlib.contextmanager
def _capture(model: nn.Module, name: str, store: dict):
    """Within the block, model(x) keeps module `name`'s output Tensor in store["output"]:
    its forward is wrapped, and Sequential's fused runs are off (they never materialise it)."""
    module = dict(model.named_modules())[name]
    fused = [(m, m.__dict__.get("fuse")) for m in model.modules() if hasattr(m, "fuse")]
    forward = module.forward

    def recording(*args, **kwargs):
        store["output"] = forward(*args, **kwargs)
        return store["output"]

    module.forward = recording
    for m, _ in fused:
        m.fuse = False
    try:
        yield
    finally:
        del module.forward  # the class's forward again
        for m, own in fused:
            if own is None:
                del m.fuse
            else:
                m.fuse = own


def grad_cam(
    model: nn.Module,
    x: np.ndarray,
    target=None,
    layer: int | str | None = None,
    region=None,
) -> np.ndarray:
    """Grad-CAM heat maps float64 (n, *spatial) in [0, 1] (each map divided by its maximum; all
    zero when no feature map speaks for the class) for images x (n, c, h, w) or volumes
    x (n, c, d, h, w), resampled linearly per axis onto x's grid.

    layer: the module to explain: its dotted name ("layer4", "layer2.0.conv1", "skip.down"; a
    container's output, e.g. a residual stage, is explained as a whole) or, for a Sequential,
    the index of a conv; a conv's ReLU output is used when a ReLU follows it. Default: the last
    child of the model that holds a conv, other than an output head (the last conv of seed_cnn,
    "layer4" of a ResNet, the last decoder block "upcat" of a U-Net).
    target: class (int or (n,)), None = predicted. region: segmentation models only, the voxels
    whose class-target logits form the score (default: those predicted as the target).
    """
    name = _target_name(model, layer)
    x = np.asarray(x)
    was_training = model.training
    model.eval()
    store = {}
    try:
        with _capture(model, name, store):
            h = model(Tensor(x))
        activation = store["output"]
        _, gy = score_weights(h.data, target, region)  # d score / d logits
        h.backward(gy, retain_grad=True)  # keeps activation.grad
        A = activation.data
        gA = gy if activation is h else activation.grad  # backward keeps no grad on h
    finally:
        model.zero_grad()
        model.train(was_training)
    if A.ndim != x.ndim:
        raise ArgumentError(
            f"layer {name!r} outputs shape {A.shape}, not feature maps on the input's "
            f"{x.ndim - 2} spatial axes"
        )
    spatial = tuple(range(2, A.ndim))
    if gA is None:  # the score does not depend on this layer (an empty region)
        gA = np.zeros_like(A)
    alpha = gA.mean(axis=spatial, keepdims=True)  # (n, k, 1, ..): importance of each feature map
    cam = np.maximum((alpha * A).sum(axis=1), 0)  # (n, *feature grid)
    axes = _centres_to(model, name, x.ndim - 2)
    cam = np.maximum(_resample(cam.astype(np.float64), x.shape[2:], *axes), 0)
    peak = cam.max(axis=tuple(range(1, cam.ndim)), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


def save_explanation(
    path: str | os.PathLike,
    image: np.ndarray,
    sal: np.ndarray,
    cam: np.ndarray | None,
    title: str = "",
) -> Path:
    """A PNG with three panels: the image (c, h, w; channel 0 shown), the saliency map and the
    Grad-CAM heat map overlaid on the image (two panels when cam is None: a model without conv
    layers). matplotlib (Agg) is imported here, lazily."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gray = np.asarray(image)[0]
    fig, axes = plt.subplots(1, 2 if cam is None else 3, figsize=(6 if cam is None else 9, 3.3))
    axes[0].imshow(gray, cmap="gray")
    axes[0].set_title("input")
    axes[1].imshow(sal, cmap="hot")
    axes[1].set_title("saliency |d score / d x|")
    if cam is not None:
        axes[2].imshow(gray, cmap="gray")
        axes[2].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[2].set_title("Grad-CAM")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def explain_images(
    model: nn.Module,
    x: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    names: list[str] | None = None,
    classes: list[str] | None = None,
    target=None,
    layer: int | str | None = None,
) -> list[Path]:
    """Saliency + Grad-CAM PNGs for images x (n, c, h, w), one file per image in out_dir, named
    after `names` (default 0000, 0001, ...). Titles give the explained class and its probability.
    layer: the Conv2d for Grad-CAM (default the last); models without conv layers get saliency only."""
    from engine.train import predict_proba

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = predict_proba(model, x)
    t = _targets(probs, target)
    sal, _ = saliency(model, x, t)
    cams = grad_cam(model, x, t, layer) if conv_layer_names(model) else [None] * len(x)
    names = names or [f"{i:04d}" for i in range(len(x))]
    paths = []
    for i in range(len(x)):
        label = classes[t[i]] if classes else str(t[i])
        title = f"{names[i]}: explaining '{label}' (p = {probs[i, t[i]]:.2f})"
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in names[i])
        paths.append(
            save_explanation(out_dir / f"explain_{stem}.png", x[i], sal[i], cams[i], title)
        )
    return paths


# ---- volumes: a 3-D model on one NIfTI file or DICOM series (`medgrad explain` for 3-D) ----


def _input_channels(model: nn.Module) -> int | None:
    """in_channels of the model's first (forward) convolution, None when it has none."""
    for _, m in model.named_modules():
        g = m.geometry()
        weight = getattr(m, "weight", None)
        if g is not None and g.kind == "conv" and not g.transposed and weight is not None:
            return int(weight.shape[1])
    return None


def spatial_dims(model: nn.Module) -> int | None:
    """2 or 3: the number of spatial axes the model's spatial layers work on (None: none)."""
    for _, m in model.named_modules():
        g = m.geometry()
        if g is not None:
            return len(g.kernel_size)
    return None


def _size_multiple(model: nn.Module, nd: int) -> np.ndarray:
    """Per axis, the product of every downsampling layer's stride: an input whose sizes divide
    by it passes every pool and strided conv whole (a U-Net's 2 ** (levels - 1))."""
    multiple = np.ones(nd, np.int64)
    for _, m in model.named_modules():
        g = m.geometry()
        if g is not None and not g.transposed and m.path() is None:
            multiple *= np.asarray(g.stride, np.int64)
    return multiple


def explain_volume(
    model: nn.Module,
    volume: np.ndarray,
    meta: dict,
    out_dir: str | os.PathLike,
    *,
    preprocessing: dict | None = None,
    methods: tuple[str, ...] = ("gradcam", "saliency"),
    target: int | None = None,
    layer: int | str | None = None,
    classes: list[str] | None = None,
    name: str | None = None,
) -> list[Path]:
    """Explain a 3-D model's output for one volume (read_volume's (volume, meta)): per method
    ("gradcam", "saliency") a slice-view PNG (engine.seg_report.save_volume_explanation) and
    the heat map as NIfTI (float32 in [0, 1], on the volume's own grid and affine, so it
    overlays the input in a viewer), named NAME_METHOD.png / .nii.gz in out_dir.

    The volume is prepared as at training time (engine.segmentation.prepare_volume with the
    model file's preprocessing: "target_spacing", "window" (center, width), "normalize"; none
    stored = the voxels as read), edge-padded up to a size every
    downsampling layer divides (then the maps are cropped back), and explained for `target`
    (default: the foreground class predicted on most voxels) over the voxels predicted as it;
    maps made on a resampled grid are resampled back onto the volume's. Returns the paths.
    """
    from engine.data.volume_transforms import resample_to_spacing
    from engine.data.volumes import write_volume
    from engine.function import no_grad
    from engine.seg_report import save_volume_explanation

    path = meta.get("path", "volume")
    name = name or "volume"
    if spatial_dims(model) != 3:
        raise ArgumentError(f"{path}: the model is not a 3-D model (its layers are not 3-D)")
    from engine.segmentation import prepare_volume

    x, affine, spacing = prepare_volume(volume, meta, preprocessing or {})
    expected = _input_channels(model)
    if expected is not None and len(x) != expected:
        raise DataError(f"{path}: the volume has {len(x)} channel(s), the model expects {expected}")
    grid = x.shape[1:]
    multiple = _size_multiple(model, 3)
    padded = -(-np.asarray(grid) // multiple) * multiple
    xb = np.pad(x, [(0, 0), *((0, int(p - g)) for p, g in zip(padded, grid, strict=True))], "edge")
    xb = xb[None].astype(_model_dtype(model), copy=False)
    was_training = model.training
    try:
        with no_grad():
            logits = model.eval()(Tensor(xb)).data
    finally:
        model.train(was_training)
    t, weights = score_weights(logits, target)
    inside = np.zeros(logits.shape[2:], bool)
    inside[tuple(slice(0, g) for g in grid)] = True  # padding is never part of the region
    region = weights[0, t[0]].astype(bool) & inside if logits.ndim > 2 else None
    crop = (0, *(slice(0, g) for g in grid))
    maps = {}
    for method in methods:
        if method == "gradcam":
            maps[method] = grad_cam(model, xb, t, layer, region)[crop]
        elif method == "saliency":
            sal = saliency(model, xb, t, region)[0][crop]
            peak = sal.max()
            maps[method] = sal / peak if peak > 0 else sal
        else:
            raise ArgumentError(f"method {method!r}: expected 'gradcam' or 'saliency'")
    label = classes[t[0]] if classes and t[0] < len(classes) else str(t[0])
    n_region = int(region.sum()) if region is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = np.asarray(volume)[0] if np.ndim(volume) == 4 else np.asarray(volume)
    paths = []
    for method, heat in maps.items():
        if heat.shape != shown.shape:  # made on a resampled grid: back onto the volume's
            heat, _ = resample_to_spacing(
                heat.astype(np.float32), affine, spacing, meta["spacing"], output_shape=shown.shape
            )
            heat = np.clip(heat, 0, 1)
        where = f", {n_region} voxels predicted" if n_region is not None else ""
        title = f"{name}: {method} for class '{label}'{where}"
        paths.append(
            save_volume_explanation(
                shown, heat, out_dir / f"{name}_{method}.png", spacing=meta["spacing"], title=title
            )
        )
        paths.append(write_volume(out_dir / f"{name}_{method}.nii.gz", heat, meta["affine"]))
    return paths


def _model_dtype(model: nn.Module):
    """The dtype of the model's parameters (float32 unless cast), for its inputs."""
    for p in model.parameters():
        return p.data.dtype
    return np.float32
