"""3-D explanations: saliency of a segmentation model is the finite-difference gradient of the
explained score (class-t logits summed over a region), Grad-CAM reproduces maps known by
construction and resamples coarse maps trilinearly, and `medgrad explain` runs a 3-D model file
on a NIfTI volume and a DICOM series (same heat map, the input's affine) and refuses bad input
with one line naming the file or option."""

from __future__ import annotations

import numpy as np
import pytest

import models
from engine import Tensor, nn
from engine.errors import ArgumentError
from engine.explain import (
    class_score,
    grad_cam,
    grad_cam_layer,
    saliency,
    score_weights,
)
from engine.gradcheck import check_grad, numerical_grad


def _unet(rng, dtype=np.float64):
    model = models.get("unet3d", in_channels=1, num_classes=2, features=(2, 4), rng=rng)
    return model.astype(dtype)


def _score(model, x, w) -> float:
    """The explained score with its weights w (the region) held fixed: sum(w * logits)."""
    return float((model(Tensor(x)).data * w).sum())


def test_segmentation_score_weights_default_and_region(rng):
    logits = rng.standard_normal((2, 3, 2, 3, 4))
    t, w = score_weights(logits)
    predicted = logits.argmax(axis=1)
    # default class: the foreground class (1 or 2) predicted on most voxels, per volume
    counts = [[(predicted[i] == c).sum() for c in (1, 2)] for i in range(2)]
    assert t.tolist() == [1 + int(np.argmax(c)) for c in counts]
    for i in range(2):
        expected = np.zeros_like(logits[i])
        expected[t[i]] = predicted[i] == t[i]
        np.testing.assert_array_equal(w[i], expected)
    region = rng.random((2, 3, 4)) > 0.5  # one region for both volumes
    t, w = score_weights(logits, target=0, region=region)
    assert t.tolist() == [0, 0]
    np.testing.assert_array_equal(w[:, 0], np.broadcast_to(region, (2, 2, 3, 4)))
    assert not w[:, 1:].any()
    with pytest.raises(ArgumentError, match="region of shape"):
        score_weights(logits, region=np.ones((3, 3), bool))
    with pytest.raises(ArgumentError, match="target class"):
        score_weights(logits, target=3)
    with pytest.raises(ArgumentError, match="segmentation outputs"):
        score_weights(logits[:, :, 0, 0, 0], region=region)


def test_saliency_of_unet3d_is_the_gradient_of_the_explained_score(rng):
    """Tiny unet3d (features (2, 4)), one 8^3 volume, float64. A full finite-difference gradient
    costs 1024 forward passes, so: 96 random voxels one by one, and the whole gradient along
    two random directions (a central difference of the score)."""
    model = _unet(rng)
    x = rng.standard_normal((1, 1, 8, 8, 8))
    sal, grad = saliency(model, x)
    _, w = score_weights(model(Tensor(x)).data)
    assert w.sum() > 0  # a non-empty predicted region: the score is not trivially 0
    np.testing.assert_array_equal(sal, np.abs(grad).max(axis=1))
    eps = 1e-6
    for flat in rng.choice(x.size, 96, replace=False):
        i = np.unravel_index(flat, x.shape)
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        numeric = (_score(model, up, w) - _score(model, down, w)) / (2 * eps)
        np.testing.assert_allclose(grad[i], numeric, atol=1e-5, rtol=1e-4, err_msg=str(i))
    for _ in range(2):
        v = rng.standard_normal(x.shape)
        numeric = (_score(model, x + eps * v, w) - _score(model, x - eps * v, w)) / (2 * eps)
        np.testing.assert_allclose((grad * v).sum(), numeric, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_saliency_of_conv3d_sequential_passes_gradcheck(rng):
    model = nn.Sequential(
        nn.Conv3d(1, 3, 3, padding=1, rng=rng), nn.ReLU(), nn.Conv3d(3, 2, 1, rng=rng)
    ).astype(np.float64)
    x = rng.standard_normal((2, 1, 3, 4, 5))
    region = rng.random((2, 3, 4, 5)) > 0.4
    target = np.array([1, 0])
    # the score (one per volume, random upstream gradient) against its image and every weight
    check_grad(
        lambda xt: class_score(model, xt, target, region), [x], params=model.named_parameters()
    )
    _, grad = saliency(model, x, target, region)
    _, w = score_weights(model(Tensor(x)).data, target, region)
    np.testing.assert_allclose(
        grad, numerical_grad(lambda: _score(model, x, w), x), atol=1e-5, rtol=1e-4
    )
    # the default region (voxels predicted as the target) is what saliency explains unasked
    _, grad_default = saliency(model, x, target)
    _, w_default = score_weights(model(Tensor(x)).data, target)
    np.testing.assert_allclose(
        grad_default, numerical_grad(lambda: _score(model, x, w_default), x), atol=1e-5, rtol=1e-4
    )


def _conv3d(c_in, c_out, weight, bias, **kw) -> nn.Conv3d:
    conv = nn.Conv3d(c_in, c_out, **kw)
    conv.weight.data = np.asarray(weight, np.float64).reshape(conv.weight.data.shape)
    conv.bias.data = np.asarray(bias, np.float64)
    return conv


def test_grad_cam_of_a_one_conv_segmentation_model_is_its_logit_map(rng):
    """logits = A = conv(x) with A_0 = 2 x + 0.5, A_1 = -x: the score of class t over region M
    has dA_t = M, so a_t = |M| / V, the other a = 0, and the map is ReLU(A_t) / max."""
    model = nn.Sequential(_conv3d(1, 2, [2.0, -1.0], [0.5, 0.0], kernel_size=1))
    x = rng.standard_normal((2, 1, 3, 4, 5))
    for t, a in ((0, 2 * x[:, 0] + 0.5), (1, -x[:, 0])):
        expected = np.maximum(a, 0) / np.maximum(a, 0).max(axis=(1, 2, 3), keepdims=True)
        np.testing.assert_allclose(grad_cam(model, x, target=t, layer="0"), expected, atol=1e-12)
        region = rng.random((3, 4, 5)) > 0.5
        np.testing.assert_allclose(
            grad_cam(model, x, target=t, layer="0", region=region), expected, atol=1e-12
        )
    # an empty region explains nothing: the map is all zero, not a division by zero
    empty = np.zeros((3, 4, 5), bool)
    assert not grad_cam(model, x, target=1, layer="0", region=empty).any()


def test_grad_cam_of_a_3d_classifier_matches_the_hand_computed_map(rng):
    """A = ReLU([x, -x]) (a 1x1x1 conv with weights 1 and -1), then Flatten and Linear: the
    gradient of logit c on A is the Linear row c itself, so a_k = mean of its k-th block and
    the map is ReLU(a_0 ReLU(x) + a_1 ReLU(-x)) / max."""
    d, h, w = 2, 3, 4
    model = nn.Sequential(
        _conv3d(1, 2, [1.0, -1.0], [0.0, 0.0], kernel_size=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * d * h * w, 2, rng=rng),
    ).astype(np.float64)
    x = rng.standard_normal((3, 1, d, h, w))
    linear = model.layers[3].weight.data  # (2, 2 * d * h * w): PyTorch's (out, in)
    for c in (0, 1):
        a = linear[c].reshape(2, d, h, w).mean(axis=(1, 2, 3))
        cam = np.maximum(a[0] * np.maximum(x[:, 0], 0) + a[1] * np.maximum(-x[:, 0], 0), 0)
        peak = cam.max(axis=(1, 2, 3), keepdims=True)
        expected = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        # the conv is followed by a ReLU: Grad-CAM reads the ReLU's output, layer 0 or "1"
        np.testing.assert_allclose(grad_cam(model, x, target=c, layer=0), expected, atol=1e-12)


def test_grad_cam_upsamples_a_strided_map_trilinearly(rng):
    """A 2x2x2 conv of stride 2 puts cell u at input voxel 2 u + 0.5 on every axis; the coarse
    map (here A itself: one channel, positive weights and inputs, a_0 > 0) comes back as the
    trilinear interpolation at (o - 0.5) / 2, clamped at the edges (scipy's map_coordinates)."""
    from scipy import ndimage

    conv = nn.Conv3d(1, 1, kernel_size=2, stride=2)
    conv.weight.data = rng.random((1, 1, 2, 2, 2)) + 0.1
    conv.bias.data = np.zeros(1)
    linear = nn.Linear(3 * 2 * 4, 1)
    linear.weight.data = np.ones((1, 24))
    linear.bias.data = np.zeros(1)
    model = nn.Sequential(conv, nn.Flatten(), linear)
    x = rng.random((1, 1, 6, 4, 8))
    A = model.layers[0](Tensor(x)).data[0, 0]  # (3, 2, 4)
    coords = np.meshgrid(*((np.arange(n) - 0.5) / 2 for n in x.shape[2:]), indexing="ij")
    coords = [np.clip(c, 0, n - 1) for c, n in zip(coords, A.shape, strict=True)]
    expected = ndimage.map_coordinates(A, coords, order=1, mode="nearest")
    expected /= expected.max()
    np.testing.assert_allclose(grad_cam(model, x, target=0, layer=0)[0], expected, atol=1e-12)


def test_unet3d_grad_cam_layers(rng):
    model = _unet(rng)
    # the default skips the 1x1 head (whose map would be the logits) for the last decoder block
    assert grad_cam_layer(model) == "upcat"
    x = rng.standard_normal((1, 1, 8, 8, 8))
    for layer in (None, "skip.down", "conv_0"):
        cam = grad_cam(model, x, layer=layer)
        assert cam.shape == (1, 8, 8, 8) and cam.min() >= 0 and cam.max() == 1, layer
    with pytest.raises(ArgumentError, match="not a module with a convolution"):
        grad_cam_layer(model, "nope")


def test_explain_prepares_a_volume_as_training_did(rng):
    """One preprocessing for training, evaluation, prediction and explanation:
    engine.segmentation.prepare_volume (CT window (center, width) to [0, 1], or z-score, after
    an optional target spacing); nothing stored = the voxels as read; unknown values refused."""
    from engine.segmentation import prepare_volume

    volume = rng.uniform(-1200, 600, (4, 6, 8)).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])[:, [2, 1, 0, 3]]
    meta = {"affine": affine, "spacing": (2.0, 1.0, 1.0)}
    x, a, s = prepare_volume(volume, meta, {})
    np.testing.assert_array_equal(x, volume[None])
    assert s == (2.0, 1.0, 1.0) and np.array_equal(a, affine)
    x, _, _ = prepare_volume(volume, meta, {"window": [-300, 1400]})  # lo -1000, hi 400
    np.testing.assert_allclose(x[0], (np.clip(volume, -1000, 400) + 1000) / 1400, atol=1e-6)
    x, _, _ = prepare_volume(volume, meta, {"normalize": "zscore", "input_size": 28})
    np.testing.assert_allclose(x[0], (volume - volume.mean()) / volume.std(), atol=1e-4)
    x, a, s = prepare_volume(volume, meta, {"target_spacing": [1.0, 1.0, 2.0]})
    assert x.shape == (1, 8, 6, 4) and s == (1.0, 1.0, 2.0)
    np.testing.assert_allclose(np.linalg.norm(a[:3, :3], axis=0), [1.0, 1.0, 2.0])
    with pytest.raises(ArgumentError, match="normalize"):
        prepare_volume(volume, meta, {"normalize": "percentile"})
    with pytest.raises(ArgumentError, match="window"):
        prepare_volume(volume, meta, {"window": [-1000]})


# ---- medgrad explain on a 3-D model file ----


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory):
    """A tiny unet3d (random weights) saved with CT preprocessing, and one synthetic case as
    NIfTI and as a DICOM series."""
    pytest.importorskip("pydicom")
    from engine.checkpoint import save_checkpoint
    from engine.data.synthetic_volumes import make_segmentation_demo_data

    root = tmp_path_factory.mktemp("explain3d")
    data = make_segmentation_demo_data(root / "data", n_cases=1, size=16, dicom=True)
    model = models.get(
        "unet3d", in_channels=1, num_classes=2, features=(2, 4), rng=np.random.default_rng(3)
    )
    prep = {"window": [-300.0, 1400.0], "normalize": None, "target_spacing": None}
    path = save_checkpoint(
        root / "model.npz", model, preprocessing=prep, classes=["background", "nodule"]
    )
    return path, data / "imagesTr" / "case_000.nii.gz", data / "dicom" / "case_000", root


def test_cli_explains_a_volume_from_nifti_and_dicom(volume_model, capsys):
    from matplotlib.image import imread

    from engine import cli
    from engine.data.volumes import read_volume

    model, nifti, dicom, root = volume_model
    image, meta = read_volume(nifti)
    out = root / "out_nifti"
    assert cli.main(["explain", str(model), str(nifti), "--out", str(out)]) == 0
    assert "4 files" in capsys.readouterr().out
    heat = {}
    for method in ("gradcam", "saliency"):
        png = imread(out / f"case_000_{method}.png")
        assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100
        h, h_meta = read_volume(out / f"case_000_{method}.nii.gz")
        assert h.shape == image.shape and h.min() >= 0 and h.max() == 1
        np.testing.assert_allclose(h_meta["affine"], meta["affine"], atol=1e-4)
        heat[method] = h
    # the same case as a DICOM series: the same Grad-CAM, on the same grid; one method asked
    out = root / "out_dicom"
    args = ["explain", str(model), str(dicom), "--method", "gradcam", "--out", str(out)]
    assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "case_000_gradcam.nii.gz",
        "case_000_gradcam.png",
    ]
    h, h_meta = read_volume(out / "case_000_gradcam.nii.gz")
    np.testing.assert_allclose(h, heat["gradcam"], atol=1e-5)
    np.testing.assert_allclose(h_meta["affine"], meta["affine"], atol=1e-3)


def test_cli_explain_volume_bad_input_names_it(volume_model, capsys):
    import nibabel as nib

    from engine import cli
    from engine.data.synthetic_volumes import affine_for
    from engine.data.volumes import write_volume

    model, nifti, _, root = volume_model
    flat = root / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), flat)
    two = write_volume(
        root / "two.nii.gz",
        np.zeros((2, 8, 16, 16), np.float32),
        affine_for((8, 16, 16), (1, 1, 1)),
    )
    cases = [
        ([str(flat)], str(flat)),  # a 2-D image for a 3-D model
        ([str(two)], "2 channel(s), the model expects 1"),
        ([str(nifti), "--layer", "nope"], "--layer nope"),
        ([str(nifti), "--target", "5"], "target class"),
        ([str(root / "missing.nii.gz")], "missing.nii.gz"),
    ]
    for args, needle in cases:
        out = root / "bad_out"
        assert cli.main(["explain", str(model), *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("medgrad: error:") and needle in err[0], err
        assert not any(out.glob("*.nii.gz")), args  # nothing written on refusal


def test_cli_explain_2d_model_refuses_volume_and_method(tmp_path, capsys):
    from engine import cli
    from engine.checkpoint import save_checkpoint

    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(0))
    path = save_checkpoint(tmp_path / "m.npz", model, preprocessing={"input_size": 28})
    assert cli.main(["explain", str(path), "x.nii.gz", "--out", str(tmp_path / "o")]) == 2
    assert "not a 3-D model" in capsys.readouterr().err
    assert cli.main(["explain", str(path), "phantoms", "--method", "saliency"]) == 2
    assert "--method saliency" in capsys.readouterr().err
