"""Per-voxel cross-entropy with ignore_index, Dice, Dice + CE and focal losses: gradient checks on
every backend, hand-computed cases, MONAI's formulas written out in NumPy, PyTorch cross-checks."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
import engine.ops.loss as loss_ops
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from engine.ops.loss import MaskedSoftmaxCrossEntropyFn, SoftmaxCrossEntropyFn
from engine.tensor import Tensor
from tests.conftest import TOL, cpu_only
from tests.helpers import on_device, to_host


def _softmax(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _onehot(labels, k):
    """(n, *spatial) int -> (n, k, *spatial) float64."""
    return np.moveaxis(np.eye(k)[labels], -1, 1)


def _ce_reference(z, t, ignore_index=-100):
    """torch's cross_entropy (mean over the kept elements), written out in NumPy."""
    logp = np.log(_softmax(z))
    kept = t != ignore_index
    picked = np.take_along_axis(logp, np.where(kept, t, 0)[:, None], axis=1)[:, 0]
    return -(picked * kept).sum() / kept.sum()


def _dice_reference(
    z,
    t,
    activation="softmax",
    include_background=True,
    squared_pred=False,
    jaccard=False,
    batch=False,
    reduction="mean",
    nr=1e-5,
    dr=1e-5,
):
    """MONAI's DiceLoss.forward, written out in NumPy (t one-hot, like z)."""
    p = {"softmax": lambda: _softmax(z), "sigmoid": lambda: 1 / (1 + np.exp(-z))}.get(
        activation, lambda: z
    )()
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]
    axes = tuple(range(2, z.ndim))
    axes = (0, *axes) if batch else axes
    intersection = (p * t).sum(axis=axes)
    if squared_pred:
        p, t = p**2, t**2
    denominator = t.sum(axis=axes) + p.sum(axis=axes)
    if jaccard:
        denominator = 2.0 * (denominator - intersection)
    f = 1.0 - (2.0 * intersection + nr) / (denominator + dr)
    return {"mean": f.mean, "sum": f.sum, "none": lambda: f}[reduction]()


# ---------------------------------------------------------------- cross-entropy per voxel


def test_cross_entropy_nd_grad_with_ignored(backend, rng):
    z = rng.standard_normal((2, 3, 4, 5))
    t = rng.integers(0, 3, (2, 4, 5))
    t[0, 1, :3] = -100
    labels = on_device(t, backend.device)
    tol = dict(device=backend.device, **TOL["gradcheck"])
    check_grad(lambda x: F.softmax_cross_entropy(x, labels), [z], **tol)
    # ignore_index naming a real class leaves that class out
    check_grad(lambda x: F.softmax_cross_entropy(x, labels.clip(0), ignore_index=2), [z], **tol)


def test_cross_entropy_nd_value_and_ignore(backend, rng):
    z = rng.standard_normal((2, 4, 3, 2, 5))  # a 5-D volume, NCDHW
    t = rng.integers(0, 4, (2, 3, 2, 5))
    t[1] = -100
    got = F.softmax_cross_entropy(on_device(z, backend.device), on_device(t, backend.device))
    np.testing.assert_allclose(got.item(), _ce_reference(z, t), **TOL["loops64"])
    t2 = rng.integers(0, 4, (6,))
    z2 = rng.standard_normal((6, 4))
    for ignore in (0, 3):  # a real class ignored: on cuda too, the 2-D path must honour it
        got = F.softmax_cross_entropy(
            on_device(z2, backend.device), on_device(t2, backend.device), ignore_index=ignore
        )
        np.testing.assert_allclose(got.item(), _ce_reference(z2, t2, ignore), **TOL["loops64"])


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient(backend, rng):
    z = Tensor(on_device(rng.standard_normal((2, 3, 4)), backend.device), requires_grad=True)
    loss = F.softmax_cross_entropy(z, on_device(np.full((2, 4), -100), backend.device))
    assert np.isnan(loss.item())  # PyTorch's rule: a mean over no element
    loss.backward()
    np.testing.assert_array_equal(to_host(z.grad), np.zeros((2, 3, 4)))


def test_cross_entropy_huge_logits_per_voxel(backend):
    z = np.zeros((1, 3, 2))
    z[0, :, 0], z[0, :, 1] = (1e4, -1e4, 0.0), (-1e4, 1e4, 5.0)
    z = Tensor(on_device(z, backend.device), requires_grad=True)
    loss = F.softmax_cross_entropy(z, on_device(np.array([[0, 2]]), backend.device))
    loss.backward()
    np.testing.assert_allclose(loss.item(), (1e4 - 5) / 2, rtol=1e-12)
    np.testing.assert_allclose(to_host(z.grad)[0].T, [[0, 0, 0], [0, 0.5, -0.5]], atol=1e-12)


@cpu_only("which Function runs depends on a CPU-side scan of the targets")
def test_cross_entropy_2d_keeps_the_fused_kernels(rng):
    z = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    assert isinstance(
        F.softmax_cross_entropy(z, np.array([0, 2, 1, 2])).creator, SoftmaxCrossEntropyFn
    )
    ignored = F.softmax_cross_entropy(z, np.array([0, -100, 1, 2]))
    assert isinstance(ignored.creator, MaskedSoftmaxCrossEntropyFn)
    expected = _ce_reference(z.data, np.array([0, -100, 1, 2]))
    np.testing.assert_allclose(ignored.item(), expected, **TOL["loops64"])


def test_cross_entropy_bad_target_raises_on_cpu_nan_on_cuda(backend):
    z = on_device(np.zeros((2, 3, 4)), backend.device)
    t = on_device(np.array([[0, 1, 2, 3], [0, 0, -100, 0]]), backend.device)
    if backend.device == "cpu":
        with pytest.raises(ArgumentError, match=r"\[0, 3\) or equal ignore_index=-100, got 3"):
            F.softmax_cross_entropy(z, t)
    else:  # no device sync for a check: the loss says it instead
        assert np.isnan(F.softmax_cross_entropy(z, t).item())


def test_cross_entropy_2d_ignored_rows(backend, rng):
    """Ignored rows of 2-D logits are left out of the mean on every device (on cuda the targets
    are not scanned: the masked path runs there whenever an ignore_index is given)."""
    z, t = rng.standard_normal((3, 4)), np.array([0, -100, 3])
    zt = Tensor(on_device(z, backend.device), requires_grad=True)
    loss = F.softmax_cross_entropy(zt, on_device(t, backend.device))
    loss.backward()
    np.testing.assert_allclose(loss.item(), _ce_reference(z, t), **TOL["loops64"])
    e = np.exp(z - z.max(axis=1, keepdims=True))
    expected = (e / e.sum(axis=1, keepdims=True) - np.eye(4)[t.clip(0)]) / 2  # 2 rows kept
    expected[1] = 0
    np.testing.assert_allclose(to_host(zt.grad), expected, **TOL["loops64"])


@pytest.mark.parametrize("ignore_index", [-100, 255, None])
def test_cross_entropy_2d_routing_without_a_host_scan(monkeypatch, rng, ignore_index):
    """The cuda routing, on the CPU: with the targets taken as device arrays (no scan of them),
    2-D logits run the fused kernels only with ignore_index=None; with one, the masked path leaves
    the ignored rows out of the mean, and a kept target outside [0, k) makes the loss and its
    row's gradient nan (what cuda shows instead of raising)."""
    monkeypatch.setattr(loss_ops, "_on_host", lambda a: False)
    z = rng.standard_normal((4, 3))
    kept = np.array([0, 2, 1, 2])
    zt = Tensor(z, requires_grad=True)
    fn = SoftmaxCrossEntropyFn if ignore_index is None else MaskedSoftmaxCrossEntropyFn
    assert isinstance(F.softmax_cross_entropy(zt, kept, ignore_index).creator, fn)
    if ignore_index is None:
        return
    t = np.array([0, ignore_index, 1, ignore_index])
    loss = F.softmax_cross_entropy(zt, t, ignore_index)
    loss.backward()
    np.testing.assert_allclose(loss.item(), _ce_reference(z, t, ignore_index), **TOL["loops64"])
    assert np.all(zt.grad[[1, 3]] == 0) and np.isfinite(zt.grad).all()
    zt.grad = None
    bad = F.softmax_cross_entropy(zt, np.array([0, ignore_index, 7, 1]), ignore_index)
    bad.backward()
    assert np.isnan(bad.item())
    assert np.isnan(zt.grad[2]).all() and np.isfinite(zt.grad[[0, 1, 3]]).all()


def test_cross_entropy_argument_errors(backend):
    z = on_device(np.zeros((2, 3, 4)), backend.device)
    with pytest.raises(ArgumentError, match=r"integer targets of shape \(2, 4\).*\(2, 3\)"):
        F.softmax_cross_entropy(z, on_device(np.zeros((2, 3), dtype=int), backend.device))
    with pytest.raises(ArgumentError, match="integer targets"):
        F.softmax_cross_entropy(z, on_device(np.zeros((2, 4)), backend.device))
    with pytest.raises(ArgumentError, match=r"logits \(n, k\)"):
        F.softmax_cross_entropy(on_device(np.zeros(3), backend.device), np.zeros(3, dtype=int))
    with pytest.raises(ArgumentError, match="ignore_index"):
        F.softmax_cross_entropy(z, on_device(np.zeros((2, 4), int), backend.device), 1.5)


@pytest.mark.oracle
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4), (2, 4, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_cross_entropy_matches_torch(rng, shape, ignore_index):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal(shape)
    t = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    t.reshape(-1)[::3] = -100 if ignore_index == -100 else t.reshape(-1)[::3]
    ours = Tensor(z.copy(), requires_grad=True)
    loss = F.softmax_cross_entropy(ours, t, ignore_index=ignore_index)
    loss.backward()
    theirs = torch.tensor(z, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(theirs, torch.tensor(t), ignore_index=ignore_index)
    tloss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-12)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- Dice


def test_dice_hand_computed(backend):
    # one sample, 2 classes, 4 voxels, probabilities given (activation None); class 1:
    # p = (.5, .5, 0, 0), t = (1, 1, 0, 0): I = 1, D = 2 + 1 = 3, f = 1 - 2/3 = 1/3;
    # class 0: p = (.5, .5, 1, 1), t = (0, 0, 1, 1): I = 2, D = 2 + 3 = 5, f = 1 - 4/5 = 1/5
    p = on_device(np.array([[[0.5, 0.5, 1, 1], [0.5, 0.5, 0, 0]]]), backend.device)
    t = on_device(np.array([[1, 1, 0, 0]]), backend.device)
    f = to_host(F.dice_loss(p, t, activation=None, reduction="none"))
    np.testing.assert_allclose(f, [[1 / 5, 1 / 3]], rtol=1e-4)
    one = F.dice_loss(p, t, activation=None, include_background=False)
    np.testing.assert_allclose(one.item(), 1 / 3, rtol=1e-4)


def test_dice_perfect_disjoint_and_background(backend, rng):
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[:, 0, 0] = (1, 2)  # every class present in every sample
    onehot = _onehot(labels, 3)
    t = on_device(labels, backend.device)
    perfect = on_device(50 * (2 * onehot - 1), backend.device)  # softmax ~ one-hot
    assert F.dice_loss(perfect, t).item() < 1e-6
    wrong = on_device(50 * (2 * _onehot((labels + 1) % 3, 3) - 1), backend.device)  # disjoint
    assert F.dice_loss(wrong, t).item() > 1 - 1e-6
    # background right, every foreground voxel wrong: only the background scores
    swapped = np.where(labels == 1, 2, np.where(labels == 2, 1, 0))
    half = on_device(50 * (2 * _onehot(swapped, 3) - 1), backend.device)
    np.testing.assert_allclose(F.dice_loss(half, t).item(), 2 / 3, atol=1e-6)
    assert F.dice_loss(half, t, include_background=False).item() > 1 - 1e-6


def test_dice_smoothing_on_empty_classes(backend):
    # class 1 absent from the target: predicted absent -> f = 1 - nr/dr = 0; predicted -> ~1
    t = on_device(np.zeros((1, 4), dtype=int), backend.device)
    empty = on_device(np.array([[[1.0] * 4, [0.0] * 4]]), backend.device)
    f = to_host(F.dice_loss(empty, t, activation=None, reduction="none"))
    np.testing.assert_allclose(f, [[0.0, 0.0]], atol=1e-12)
    present = on_device(np.array([[[0.5] * 4, [0.5] * 4]]), backend.device)
    f = to_host(F.dice_loss(present, t, activation=None, reduction="none"))
    np.testing.assert_allclose(f[0, 1], 1 - 1e-5 / (2 + 1e-5), rtol=1e-12)
    f = to_host(F.dice_loss(empty, t, activation=None, reduction="none", smooth_nr=0.0))
    assert f[0, 1] == 1.0  # no numerator smoothing: an empty class scores 0 (loss 1)


DICE_OPTIONS = [
    dict(),
    dict(include_background=False),
    dict(squared_pred=True, reduction="sum"),
    dict(jaccard=True, batch=True),
    dict(activation="sigmoid", reduction="none"),
    dict(activation="sigmoid", include_background=False, batch=True, reduction="none"),
    dict(smooth_nr=0.0, smooth_dr=1e-3, squared_pred=True, jaccard=True),
]


@pytest.mark.parametrize("options", DICE_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_dice_matches_monai_formula(backend, rng, options):
    z, labels = rng.standard_normal((2, 3, 4, 3)), rng.integers(0, 3, (2, 4, 3))
    ours = {k: v for k, v in options.items() if k not in ("smooth_nr", "smooth_dr")}
    ours.update(smooth_nr=options.get("smooth_nr", 1e-5), smooth_dr=options.get("smooth_dr", 1e-5))
    ref_options = {
        ("nr" if k == "smooth_nr" else "dr" if k == "smooth_dr" else k): v for k, v in ours.items()
    }
    expected = _dice_reference(z, _onehot(labels, 3), **ref_options)
    zd = on_device(z, backend.device)
    for target in (labels, labels[:, None], _onehot(labels, 3)):  # labels, MONAI's B1HW, one-hot
        got = to_host(F.dice_loss(zd, on_device(target, backend.device), **ours))
        np.testing.assert_allclose(got, expected, **TOL["loops64"])


@pytest.mark.parametrize("options", DICE_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_dice_grad(backend, rng, options):
    labels = on_device(rng.integers(0, 3, (2, 3, 4)), backend.device)
    check_grad(
        lambda z: F.dice_loss(z, labels, **options),
        [rng.standard_normal((2, 3, 3, 4))],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_dice_on_a_volume_uses_softmax_over_channels(backend, rng):
    # NCDHW: the softmax must run over axis 1, so that each voxel's probabilities sum to 1
    z, labels = rng.standard_normal((1, 2, 2, 3, 2)), rng.integers(0, 2, (1, 2, 3, 2))
    np.testing.assert_allclose(
        F.dice_loss(on_device(z, backend.device), on_device(labels, backend.device)).item(),
        _dice_reference(z, _onehot(labels, 2)),
        **TOL["loops64"],
    )
    t = on_device(labels, backend.device)
    check_grad(lambda x: F.dice_loss(x, t), [z], device=backend.device, **TOL["gradcheck"])


def test_dice_binary_single_channel(backend, rng):
    z, mask = rng.standard_normal((2, 1, 5, 3)), rng.integers(0, 2, (2, 5, 3))
    got = F.dice_loss(
        on_device(z, backend.device), on_device(mask, backend.device), activation="sigmoid"
    )
    expected = _dice_reference(z, mask[:, None].astype(float), activation="sigmoid")
    np.testing.assert_allclose(got.item(), expected, **TOL["loops64"])


def test_dice_argument_errors(backend):
    z = on_device(np.zeros((2, 3, 4)), backend.device)
    labels = on_device(np.zeros((2, 4), dtype=int), backend.device)
    cases = [
        (lambda: F.dice_loss(on_device(np.zeros((2, 3)), backend.device), labels[:, 0]), "axes"),
        (lambda: F.dice_loss(z, labels[:, :3]), r"target must be .*\(2, 4\).*got shape \(2, 3\)"),
        (lambda: F.dice_loss(z, labels.astype(float)), "must be integers"),
        (lambda: F.dice_loss(z, labels, activation="relu"), "activation"),
        (lambda: F.dice_loss(z, labels, reduction="max"), "reduction"),
        (lambda: F.dice_loss(z[:, :1], labels), "single channel"),
        (
            lambda: F.dice_loss(z[:, :1], labels, activation="sigmoid", include_background=False),
            "include_background",
        ),
    ]
    for call, match in cases:
        with pytest.raises(ArgumentError, match=match):
            call()


@cpu_only("on cuda the labels are not scanned (a sync); test_dice_bad_label_is_nan_on_cuda")
def test_dice_label_out_of_range_raises():
    with pytest.raises(ArgumentError, match=r"labels must lie in \[0, 3\).*\[3\]"):
        F.dice_loss(np.zeros((1, 3, 2)), np.array([[0, 3]]))
    with pytest.raises(ArgumentError, match=r"\[0, 2\).*\[-1\]"):  # one channel: a 0/1 mask
        F.dice_loss(np.zeros((1, 1, 2)), np.array([[0, -1]]), activation="sigmoid")


def test_dice_bad_label_is_nan_on_cuda(backend):
    if backend.device == "cpu":
        pytest.skip("the CPU raises instead: test_dice_label_out_of_range_raises")
    z, t = on_device(np.zeros((1, 3, 2)), "cuda"), on_device(np.array([[0, 3]]), "cuda")
    assert np.isnan(F.dice_loss(z, t).item())


# ---------------------------------------------------------------- Dice + cross-entropy


def test_dice_ce_is_the_weighted_sum(backend, rng):
    z, labels = rng.standard_normal((2, 3, 4, 2)), rng.integers(0, 3, (2, 4, 2))
    zd = on_device(z, backend.device)
    expected = 0.3 * _dice_reference(z, _onehot(labels, 3), include_background=False) + 2.0 * (
        _ce_reference(z, labels)
    )
    for target in (labels, _onehot(labels, 3)):  # a one-hot target: CE on its argmax
        got = F.dice_ce_loss(
            zd,
            on_device(target, backend.device),
            lambda_dice=0.3,
            lambda_ce=2.0,
            include_background=False,
        )
        np.testing.assert_allclose(got.item(), expected, **TOL["loops64"])
    # one channel: sigmoid Dice + binary cross-entropy with logits
    z1, mask = z[:, :1], labels.clip(0, 1)
    bce = np.mean(np.maximum(z1, 0) - z1 * mask[:, None] + np.log1p(np.exp(-np.abs(z1))))
    dice = _dice_reference(z1, mask[:, None].astype(float), activation="sigmoid")
    got = F.dice_ce_loss(
        on_device(z1, backend.device), on_device(mask, backend.device), activation="sigmoid"
    )
    np.testing.assert_allclose(got.item(), dice + bce, **TOL["loops64"])


def test_dice_ce_grad_and_errors(backend, rng):
    labels = on_device(rng.integers(0, 3, (2, 3, 2)), backend.device)
    check_grad(
        lambda z: F.dice_ce_loss(z, labels, lambda_ce=0.5, squared_pred=True),
        [rng.standard_normal((2, 3, 3, 2))],
        device=backend.device,
        **TOL["gradcheck"],
    )
    z = on_device(np.zeros((2, 3, 3, 2)), backend.device)
    with pytest.raises(ArgumentError, match="lambda_ce must be >= 0"):
        F.dice_ce_loss(z, labels, lambda_ce=-1.0)
    with pytest.raises(ArgumentError, match="target must be"):
        F.dice_ce_loss(z, labels[:1])


# ---------------------------------------------------------------- focal loss


def test_focal_gamma_zero_is_cross_entropy(backend, rng):
    z, labels = rng.standard_normal((2, 3, 4)), rng.integers(0, 3, (2, 4))
    zd, t = on_device(z, backend.device), on_device(labels, backend.device)
    # softmax, gamma 0: mean over (n, k, spatial) of -t log p = CE mean / k
    got = F.focal_loss(zd, t, gamma=0.0, activation="softmax").item() * 3
    np.testing.assert_allclose(got, F.softmax_cross_entropy(zd, t).item(), **TOL["loops64"])
    # sigmoid, gamma 0: binary cross-entropy with logits on the one-hot channels
    onehot = on_device(_onehot(labels, 3), backend.device)
    np.testing.assert_allclose(
        F.focal_loss(zd, t, gamma=0.0).item(),
        F.binary_cross_entropy_with_logits(zd, onehot).item(),
        **TOL["loops64"],
    )


FOCAL_OPTIONS = [
    dict(),
    dict(gamma=0.5, alpha=0.25),
    dict(alpha=0.7, weight=[1.0, 2.0, 0.5], reduction="sum"),
    dict(include_background=False, weight=[2.0, 3.0], reduction="none"),
    dict(activation="softmax"),
    dict(activation="softmax", gamma=1.5, alpha=0.3, weight=0.5, reduction="sum"),
    dict(activation="softmax", include_background=False, alpha=0.4, reduction="none"),
]


@pytest.mark.parametrize("options", FOCAL_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_focal_grad(backend, rng, options):
    labels = on_device(rng.integers(0, 3, (2, 4)), backend.device)
    soft = on_device(rng.uniform(0, 1, (2, 3, 4)), backend.device)  # probabilities as targets
    tol = dict(device=backend.device, **TOL["gradcheck"])
    z = rng.standard_normal((2, 3, 4)) * 2
    check_grad(lambda x: F.focal_loss(x, labels, **options), [z], **tol)
    check_grad(lambda x: F.focal_loss(x, soft, **options), [z], **tol)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_focal_huge_logits_stay_finite(backend, activation):
    z = np.array([[[1e4, -1e4], [-1e4, 1e4]]])  # (1, 2, 2): every voxel certain, one wrong
    z = Tensor(on_device(z, backend.device), requires_grad=True)
    t = on_device(np.array([[0, 0]]), backend.device)
    loss = F.focal_loss(z, t, gamma=2.0, activation=activation)
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(to_host(z.grad)).all()
    # voxel 1 is wrong with certainty ((1 - p_t)^2 = 1): sigmoid, each channel misses by 1e4;
    # softmax, log p of class 0 is -2e4. Voxel 0 costs 0. Mean over 2 channels x 2 voxels.
    np.testing.assert_allclose(loss.item(), 2e4 / 4, rtol=1e-12)


def test_focal_argument_errors(backend):
    z = on_device(np.zeros((2, 3, 4)), backend.device)
    t = on_device(np.zeros((2, 4), dtype=int), backend.device)
    cases = [
        (dict(gamma=-1.0), "gamma must be >= 0"),
        (dict(alpha=1.5), r"alpha must lie in \[0, 1\]"),
        (dict(weight=[1.0, 2.0]), "weight must be one number or 3"),
        (dict(weight=[1.0, -2.0], include_background=False), "weight"),
        (dict(activation=None), "activation"),
        (dict(reduction="avg"), "reduction"),
        (dict(weight="heavy"), "weight"),
    ]
    for options, match in cases:
        with pytest.raises(ArgumentError, match=match):
            F.focal_loss(z, t, **options)
    with pytest.raises(ArgumentError, match="axes"):
        F.focal_loss(on_device(np.zeros(3), backend.device), t[0, :3])


def _torch_focal(torch, z, t, gamma, alpha, weight, activation, include_background, reduction):
    """MONAI's FocalLoss.forward written in torch, except that the background channel is dropped
    after the softmax (ours) instead of before it; t is one-hot or in [0, 1], like z."""
    tf = torch.nn.functional
    if activation == "softmax":
        logp = z.log_softmax(1)
        loss = -((1 - logp.exp()) ** gamma) * logp * t
        if alpha is not None:
            factor = torch.tensor([1 - alpha] + [alpha] * (t.shape[1] - 1), dtype=z.dtype)
            loss = factor.view(-1, *[1] * (t.ndim - 2)) * loss
    else:
        loss = z - z * t - tf.logsigmoid(z)
        loss = (tf.logsigmoid(-z * (t * 2 - 1)) * gamma).exp() * loss
        if alpha is not None:
            loss = (t * alpha + (1 - t) * (1 - alpha)) * loss
    if not include_background:
        loss = loss[:, 1:]
    if weight is not None:
        w = torch.as_tensor(weight, dtype=z.dtype).reshape(-1)
        loss = w.view(-1, *[1] * (t.ndim - 2)) * loss
    if reduction == "sum":
        return loss.mean(dim=list(range(2, t.ndim))).sum()
    return loss.mean() if reduction == "mean" else loss


@pytest.mark.oracle
@pytest.mark.parametrize("options", FOCAL_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_focal_matches_torch_reference(rng, options):
    torch = pytest.importorskip("torch")
    z, labels = rng.standard_normal((2, 3, 4, 3)) * 3, rng.integers(0, 3, (2, 4, 3))
    full = dict(gamma=2.0, alpha=None, weight=None, activation="sigmoid")
    full.update(include_background=True, reduction="mean")
    full.update(options)
    for target in (labels, rng.uniform(0, 1, (2, 3, 4, 3))):
        ours = Tensor(z.copy(), requires_grad=True)
        y = F.focal_loss(ours, target, **options)
        theirs = torch.tensor(z, requires_grad=True)
        onehot = _onehot(target, 3) if target.dtype.kind == "i" else target
        ty = _torch_focal(torch, theirs, torch.tensor(onehot), **full)
        gy = rng.standard_normal(ty.shape)
        y.backward(gy)
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-9, atol=1e-13)


@pytest.mark.oracle
def test_sigmoid_focal_matches_torchvision_formula(rng):
    """torchvision.ops.sigmoid_focal_loss (alpha 0.25, gamma 2, mean), written in torch."""
    torch = pytest.importorskip("torch")
    z, t = rng.standard_normal((3, 2, 5)) * 2, rng.integers(0, 2, (3, 2, 5)).astype(float)
    tz, tt = torch.tensor(z), torch.tensor(t)
    p = torch.sigmoid(tz)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(tz, tt, reduction="none")
    p_t = p * tt + (1 - p) * (1 - tt)
    expected = ((0.25 * tt + 0.75 * (1 - tt)) * ce * (1 - p_t) ** 2).mean()
    got = F.focal_loss(z, t, gamma=2.0, alpha=0.25)
    np.testing.assert_allclose(got.item(), expected.item(), rtol=1e-12)


@pytest.mark.parametrize(
    "loss",
    [
        lambda z, t: F.softmax_cross_entropy(z, t),
        lambda z, t: F.dice_loss(z, t.clip(0), squared_pred=True),
        lambda z, t: F.dice_ce_loss(z, t.clip(0)),
        lambda z, t: F.focal_loss(z, t.clip(0), alpha=0.25, weight=[1.0, 2.0, 3.0]),
        lambda z, t: F.focal_loss(z, t.clip(0), activation="softmax", include_background=False),
    ],
    ids=["ce", "dice", "dice_ce", "focal", "focal_softmax"],
)
def test_losses_keep_float32(backend, rng, loss):
    z = on_device(rng.standard_normal((2, 3, 4, 5)).astype(np.float32), backend.device)
    z = Tensor(z, requires_grad=True)
    t = rng.integers(0, 3, (2, 4, 5))
    t[0, 0, 0] = -100  # ignored by the cross-entropy; clipped to 0 for the others
    y = loss(z, on_device(t, backend.device))
    y.backward()
    assert y.dtype == np.float32 and z.grad.dtype == np.float32
    assert np.isfinite(y.item()) and np.isfinite(to_host(z.grad)).all()
