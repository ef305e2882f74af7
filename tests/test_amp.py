"""Mixed precision (engine.amp): exact bf16/fp16 rounding, where autocast rounds (conv and dense
products, both passes), the fp16 loss scaler, and a short phantom run in each precision."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
import models
from engine import amp, nn, optim
from engine.data.phantoms import make_phantoms
from engine.errors import ArgumentError
from engine.tensor import Tensor
from engine.train import evaluate, fit


def _bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize(
    "bits_in,bits_out",
    [
        (0x3F800000, 0x3F800000),  # 1.0: exact
        (0x3F808000, 0x3F800000),  # 1 + 2^-8: a tie, kept bit 16 is 0 (even): down
        (0x3F818000, 0x3F820000),  # a tie with kept bit 16 = 1: up to even
        (0x3F808001, 0x3F810000),  # just above the tie: up
        (0x3F807FFF, 0x3F800000),  # just below the tie: down
        (0xBFC0C000, 0xBFC10000),  # -1.5059: negative tie, odd kept bit: away from zero
        (0x7F7FFFFF, 0x7F800000),  # float32's largest rounds past bf16's largest: inf
        (0x7F800000, 0x7F800000),  # inf
        (0xFF800000, 0xFF800000),  # -inf
        (0x00000001, 0x00000000),  # the smallest subnormal rounds to +0
        (0x80000000, 0x80000000),  # -0 keeps its sign
    ],
)
def test_round_bf16_bit_patterns(bits_in, bits_out):
    got = amp.round_bf16(_bits([bits_in]))
    assert got.dtype == np.float32
    assert got.view(np.uint32)[0] == bits_out, f"{bits_in:#010x} -> {got.view(np.uint32)[0]:#010x}"


def test_round_bf16_nan_stays_nan():
    # a NaN whose payload sits in the low 16 bits only would become inf if truncated
    x = _bits([0x7F800001, 0xFFC00000, 0x7FFFFFFF])
    got = amp.round_bf16(x)
    assert np.isnan(got).all()
    assert (got.view(np.uint32) & 0xFFFF).max() == 0  # representable in bf16
    assert got.view(np.uint32)[1] >> 31 == 1  # the sign of -NaN kept


def test_round_bf16_matches_float64_nearest(rng):
    # oracle: the nearest of the two bf16 neighbours in float64 (ties to the even one)
    x = (rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500)).astype(np.float32)
    bits = x.view(np.uint32)
    low = (bits & 0xFFFF0000).view(np.float32).astype(np.float64)
    high = ((bits & 0xFFFF0000) + 0x10000).astype(np.uint32).view(np.float32).astype(np.float64)
    d_low, d_high = np.abs(x - low), np.abs(high - x)
    even_low = ((bits >> 16) & 1) == 0
    want = np.where((d_low < d_high) | ((d_low == d_high) & even_low), low, high)
    np.testing.assert_array_equal(amp.round_bf16(x).astype(np.float64), want)


def test_round_fp16_overflow_is_inf_and_rounds_to_even():
    x = np.array([65504.0, 65519.0, 65520.0, -1e6, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11], np.float32)
    want = np.array([65504.0, 65504.0, np.inf, -np.inf, 1.0, 1.0 + 2.0**-9], np.float32)
    np.testing.assert_array_equal(amp.round_fp16(x), want)


def test_precision_is_checked():
    with pytest.raises(ArgumentError, match="fp8"):
        with amp.autocast("fp8"):
            pass
    with pytest.raises(ArgumentError, match="fp8"):
        fit(
            nn.Linear(2, 2),
            optim.SGD(nn.Linear(2, 2).parameters(), 0.1),
            _blobs(8),
            precision="fp8",
        )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_linear_rounds_operands_in_both_passes(rng, precision):
    """y = r(x) r(W)^T + b in float32; gx = r(gy) r(W), gW = r(gy)^T r(x), gb = sum r(gy):
    oracle in float64 on the rounded operands."""
    r = amp.ROUNDINGS[precision]
    x = rng.standard_normal((5, 7)).astype(np.float32)
    W = rng.standard_normal((3, 7)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    gy = rng.standard_normal((5, 3)).astype(np.float32)
    xt, Wt, bt = (Tensor(a, requires_grad=True) for a in (x, W, b))
    with amp.autocast(precision):
        y = F.linear(xt, Wt, bt)
    y.backward(gy)
    assert y.dtype == xt.grad.dtype == Wt.grad.dtype == np.float32
    rx, rW, rgy = (r(a).astype(np.float64) for a in (x, W, gy))
    np.testing.assert_allclose(y.data, rx @ rW.T + b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xt.grad, rgy @ rW, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(Wt.grad, rgy.T @ rx, rtol=1e-6, atol=1e-6)
    # b enters y unrounded; its gradient sums the rounded upstream gradient, as in half backward
    np.testing.assert_allclose(bt.grad, rgy.sum(axis=0), rtol=1e-6, atol=1e-6)
    # and the rounding is visible: unrounded float64 products differ
    assert np.abs(y.data - (x.astype(np.float64) @ W.T + b)).max() > 1e-4


def test_conv2d_rounds_operands(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    with amp.autocast("bf16"):
        y = F.conv2d(x, W, padding=1)
    want = F.conv2d(amp.round_bf16(x), amp.round_bf16(W), padding=1)
    np.testing.assert_allclose(y.data, want.data, rtol=1e-6, atol=1e-6)
    assert np.abs(y.data - F.conv2d(x, W, padding=1).data).max() > 1e-4


def test_float64_and_other_ops_are_never_rounded(rng):
    x = rng.standard_normal((4, 5))
    W = rng.standard_normal((3, 5))
    with amp.autocast("bf16"):
        y64 = F.linear(x, W)
        e = F.exp(Tensor(x.astype(np.float32)))
    np.testing.assert_array_equal(y64.data, x @ W.T)
    np.testing.assert_array_equal(e.data, np.exp(x.astype(np.float32)))


def _blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    x = (rng.standard_normal((n, 1, 12, 12)) + 1.5 * t[:, None, None, None]).astype(np.float32)
    return x, t


def test_fp32_policy_is_bit_identical_to_no_policy():
    x, t = _blobs(64)
    weights = []
    for precision in (None, "fp32"):
        model = models.get("seed_cnn", num_classes=2, input_size=12, rng=np.random.default_rng(0))
        opt = optim.Adam(model.parameters(), lr=1e-2)
        kw = {} if precision is None else {"precision": precision}
        fit(model, opt, (x, t), epochs=2, batch_size=16, progress=False, **kw)
        weights.append([p.data.copy() for p in model.parameters()])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def _tiny_step(scaler, x, t, model, opt):
    with amp.autocast("fp16"):
        loss = F.softmax_cross_entropy(model(Tensor(x)), t, ignore_index=None)
        return amp.backward_step(loss, opt, scaler)


def test_loss_scaler_skips_overflowing_step_and_halves_scale(rng):
    model = nn.Sequential(nn.Linear(6, 5, rng=rng), nn.ReLU(), nn.Linear(5, 2, rng=rng))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    x, t = rng.standard_normal((2, 6)).astype(np.float32), np.array([0, 1])
    # 2^24 x dloss/dlogits (up to 1/2 per element for 2 rows) passes fp16's 65504: inf gradients
    scaler = amp.LossScaler(scale=2.0**24)
    before = [p.data.copy() for p in model.parameters()]
    assert _tiny_step(scaler, x, t, model, opt) is False
    assert scaler.scale == 2.0**23 and scaler.skipped == 1 and scaler.good_steps == 0
    assert opt.steps == 0 and all(m is None for m in opt.m)  # the update never ran
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.data, b)
    # a representable scale: the step runs, with the unscaled gradients of an fp16 step
    scaler.scale = 2.0**8
    assert _tiny_step(scaler, x, t, model, opt) is True
    assert opt.steps == 1 and scaler.good_steps == 1
    assert any(
        np.abs(p.data - b).max() > 0 for p, b in zip(model.parameters(), before, strict=True)
    )


def test_loss_scaler_unscales_exactly_and_grows(rng):
    model = nn.Linear(4, 2, rng=rng)
    x, t = rng.standard_normal((3, 4)).astype(np.float32), np.array([0, 1, 1])
    ref = nn.Linear(4, 2, rng=np.random.default_rng(0))
    ref.load_state_dict(model.state_dict())
    opt = optim.SGD(model.parameters(), lr=0.1)
    scaler = amp.LossScaler(scale=4.0, growth_interval=3)
    for i in range(3):
        assert _tiny_step(scaler, x, t, model, opt)
        assert scaler.scale == (8.0 if i == 2 else 4.0)
    assert scaler.good_steps == 0
    # an unscaled fp16 step on the reference: the same weights (scale 4/8 is exact in fp16 here)
    ropt = optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        _tiny_step(None, x, t, ref, ropt)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-7)
    state = scaler.state_dict()
    other = amp.LossScaler()
    other.load_state_dict(state)
    assert (other.scale, other.good_steps) == (8.0, 0)


def test_fp16_checkpoint_carries_the_scaler_and_precision(tmp_path):
    from engine.checkpoint import load_checkpoint
    from engine.train import ResumeError

    x, t = _blobs(32)

    def run(epochs, precision, resume):
        model = models.get("seed_cnn", num_classes=2, input_size=12, rng=np.random.default_rng(0))
        opt = optim.SGD(model.parameters(), lr=0.05)
        fit(model, opt, (x, t), epochs=epochs, batch_size=16, progress=False,
            precision=precision, run_dir=tmp_path, resume=resume)  # fmt: skip

    run(1, "fp16", False)
    state = load_checkpoint(tmp_path / "checkpoint.npz").train_state
    assert state["settings"]["precision"] == "fp16"
    assert state["loss_scaler"] == {"scale": 2.0**16, "good_steps": 2}
    with pytest.raises(ResumeError, match="precision"):
        run(2, "fp32", True)
    run(2, "fp16", True)  # the scaler continues where it stopped: 2 + 2 clean steps
    assert (
        load_checkpoint(tmp_path / "checkpoint.npz").train_state["loss_scaler"]["good_steps"] == 4
    )


def test_phantom_run_in_bf16_and_fp16_within_one_point_of_fp32():
    """The demo's engine stage in small (seed_cnn on 12 x 12 phantoms, 400 + 400 images, Adam):
    bf16 and fp16 training reach fp32's held-out accuracy within 1 point (4 of 400 images)."""
    x, y = make_phantoms(800, size=12, seed=0)
    accuracy = {}
    for precision in amp.PRECISIONS:
        model = models.get("seed_cnn", num_classes=2, input_size=12, rng=np.random.default_rng(0))
        opt = optim.Adam(model.parameters(), lr=3e-3)
        fit(model, opt, (x[:400], y[:400]), epochs=6, batch_size=32, progress=False,
            precision=precision)  # fmt: skip
        accuracy[precision] = evaluate(model, x[400:], y[400:])["accuracy"]
    assert accuracy["fp32"] >= 0.95, accuracy
    for precision in ("bf16", "fp16"):
        assert abs(accuracy[precision] - accuracy["fp32"]) <= 0.01, accuracy
