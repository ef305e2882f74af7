"""Why did the model say that? Vanilla-gradient saliency and Grad-CAM, with the engine's own autograd.

Both work on any model of engine.nn layers; Grad-CAM keeps the output of a chosen layer, named by
its dotted module name ("layer4", "layer2.0.conv1") or, in a Sequential, its index, during the one
forward pass and reads its gradient after one backward pass.
- saliency: |d score_c / d x|, the largest over channels: which pixels move the class score most.
- Grad-CAM (Selvaraju et al. 2017): weights a_k = mean over (i, j) of d score_c / d A_k[i, j] for
  the feature maps A of a conv layer, map = ReLU(sum_k a_k A_k), resampled to the input grid.
score_c is the logit of class c (before softmax), as in the Grad-CAM paper.
Which layers are convolutions, and where their cells sit on the input, come from each layer's
`geometry()` and each container's `path()` (engine.nn's layer protocol), so new spatial layers and
containers (Residual) need no change here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from engine import nn
from engine.errors import ArgumentError
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


def class_score(model: nn.Module, x: Tensor, target) -> Tensor:
    """score (n,) = the logit of class target[i] for image i; the quantity both maps explain."""
    logits = model(x)
    t = _targets(logits.data, target)
    return logits[np.arange(len(t)), t]


def saliency(model: nn.Module, x: np.ndarray, target=None) -> tuple[np.ndarray, np.ndarray]:
    """Vanilla gradient saliency of images x (n, c, h, w).

    Returns (map, grad): map float (n, h, w) = max over channels of |d score / d x|, and the raw
    gradient grad (n, c, h, w). target: class index (int or (n,)), None = the predicted class.
    Model parameters' .grad are left cleared.
    """
    was_training = model.training
    model.eval()
    try:
        xt = Tensor(np.asarray(x), requires_grad=True)
        class_score(model, xt, target).sum().backward()  # images are independent: one pass
        grad = xt.grad
    finally:
        model.zero_grad()
        model.train(was_training)
    return np.abs(grad).max(axis=1), grad


def _centres(layers: list[nn.Module], upto: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, offset) per axis such that feature cell u of layer `upto`'s output is centred on input
    pixel scale * u + offset: composed from each spatial layer's geometry().centre_map() (for a
    conv or pool, input = s * out - p + (k - 1) / 2); layers without geometry keep the grid."""
    scale, offset = [1.0, 1.0], [0.0, 0.0]
    for layer in layers[: upto + 1]:
        geometry = layer.geometry()
        if geometry is None:
            continue
        for a, (s, o) in enumerate(geometry.centre_map()):
            offset[a] += scale[a] * o
            scale[a] *= s
    return (scale[0], offset[0]), (scale[1], offset[1])


def _resample(maps: np.ndarray, size: tuple[int, int], rows, cols) -> np.ndarray:
    """Bilinear resampling of maps (n, fh, fw) onto the input's pixel grid (n, h, w), each feature
    cell placed at its receptive-field centre (rows/cols = (scale, offset)); clamped at the edges."""

    def weights(n_out: int, n_in: int, scale: float, offset: float) -> np.ndarray:
        f = np.clip((np.arange(n_out) - offset) / scale, 0, n_in - 1)  # fractional source index
        i0 = np.minimum(np.floor(f).astype(int), max(n_in - 2, 0))
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), i0] = 1 - (f - i0)
        if n_in > 1:
            w[np.arange(n_out), i0 + 1] += f - i0
        return w  # (n_out, n_in): one interpolation matrix per axis

    wr = weights(size[0], maps.shape[1], *rows)
    wc = weights(size[1], maps.shape[2], *cols)
    return np.einsum("hi,nij,wj->nhw", wr, maps, wc)


def _contains_conv(module: nn.Module) -> bool:
    return any(_kind(m) == "conv" for m in module.modules())


def _target_name(model: nn.Module, layer: int | str | None) -> str:
    """The dotted name of the module whose output Grad-CAM explains. An int is an index into a
    Sequential and must be a conv (the old API); a name must be a module that is or contains a
    conv; None: the last child on the model's path that contains one. A conv directly followed
    by a ReLU on its container's path gives way to that ReLU (the maps the network reads on)."""
    if isinstance(layer, int) and not isinstance(layer, bool):
        convs = conv_layers(model)
        if layer not in convs:
            raise ArgumentError(f"layer {layer} is not a Conv2d; conv layers are at {convs}")
        name = list(model.named_children())[layer][0]
    elif layer is None:
        candidates = [n for n, child in model.path() or [] if _contains_conv(child)]
        if not candidates:
            raise ArgumentError(
                "Grad-CAM needs a Conv2d layer; this model has none (conv layers are at [])"
            )
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


def _centres_to(model: nn.Module, name: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, offset) per axis of module `name`'s output cells on the input grid, composed
    along the containers' path() (a Residual's body; a shortcut starts from the block's input)."""
    scale, offset = [1.0, 1.0], [0.0, 0.0]

    def whole(module: nn.Module) -> None:
        path = module.path()
        if path is None:
            geometry = module.geometry()
            for a, (s, o) in enumerate(geometry.centre_map() if geometry else []):
                offset[a] += scale[a] * o
                scale[a] *= s
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
    return (scale[0], offset[0]), (scale[1], offset[1])


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
    model: nn.Module, x: np.ndarray, target=None, layer: int | str | None = None
) -> np.ndarray:
    """Grad-CAM heat maps float64 (n, h, w) in [0, 1] (each map divided by its maximum; all zero
    when no feature map speaks for the class) for images x (n, c, h, w).

    layer: the module to explain: its dotted name ("layer4", "layer2.0.conv1"; a container's
    output, e.g. a residual stage, is explained as a whole) or, for a Sequential, the index of a
    conv; a conv's ReLU output is used when a ReLU follows it. Default: the last child of the
    model that holds a conv (the last conv of seed_cnn, "layer4" of a ResNet).
    target: class (int or (n,)), None = predicted.
    """
    name = _target_name(model, layer)
    was_training = model.training
    model.eval()
    store = {}
    try:
        with _capture(model, name, store):
            h = model(Tensor(np.asarray(x)))
        activation = store["output"]
        t = _targets(h.data, target)
        gy = np.zeros_like(h.data)
        gy[np.arange(len(t)), t] = 1  # d score_c / d logits
        h.backward(gy, retain_grad=True)  # keeps activation.grad
        A, gA = activation.data, activation.grad
    finally:
        model.zero_grad()
        model.train(was_training)
    alpha = gA.mean(axis=(2, 3), keepdims=True)  # (n, k, 1, 1): importance of each feature map
    cam = np.maximum((alpha * A).sum(axis=1), 0)  # (n, fh, fw)
    rows, cols = _centres_to(model, name)
    cam = np.maximum(_resample(cam.astype(np.float64), x.shape[2:], rows, cols), 0)
    peak = cam.max(axis=(1, 2), keepdims=True)
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
