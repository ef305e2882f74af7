"""Captured training steps (engine.graph): the eager fallback on the CPU flavours is the plain step
bit for bit, with one warning naming the reason; bad batches are the project's errors; the device
scalars a graph reads give the host numbers' updates; on cupy (gpu) capture equals eager."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import engine.functional as F
import models
from engine import backend, graph, nn, optim
from engine.errors import ArgumentError, CaptureWarning
from engine.function import Function
from engine.tensor import Tensor
from engine.train import class_loss, fit
from kernels.cupy_cuda import gemm


def _model(seed=0):
    return models.get("seed_cnn", num_classes=3, input_size=12, rng=np.random.default_rng(seed))


def _batches(n_batches, n=6, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((n, 1, 12, 12)).astype(np.float32), rng.integers(0, 3, n))
        for _ in range(n_batches)
    ]


def _eager_reference(opt_name, data):
    """Weights and losses of the plain loop (zero_grad, forward, loss, backward, step)."""
    model = _model()
    opt = _optimizer(opt_name, model)
    losses = []
    for x, t in data:
        opt.zero_grad()
        loss = class_loss(model(Tensor(x)), t)
        loss.backward()
        opt.step()
        losses.append(loss.data.copy())
    return [p.data.copy() for p in model.parameters()], losses


def _optimizer(name, model):
    if name == "sgd":
        return optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return optim.Adam(model.parameters(), lr=1e-2)


@pytest.mark.parametrize("flavour", ["numpy", "numba"])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_fallback_step_is_the_eager_step_bit_for_bit(flavour, opt_name):
    data = _batches(2) + [_batches(1, n=4, seed=9)[0]]  # a last, shorter batch too
    with backend.use_kernels(flavour):
        want_weights, want_losses = _eager_reference(opt_name, data)
        model = _model()
        opt = _optimizer(opt_name, model)
        with pytest.warns(CaptureWarning, match=f"capture: {flavour}_cpu has no graphs") as rec:
            step = graph.capture(model, class_loss, opt, data[0])
        assert len(rec) == 1 and not step.captured
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning per call
            losses = [np.asarray(step(x, t)) for x, t in data]
    assert step.logits.shape == (4, 3)
    assert opt.steps == len(data)
    np.testing.assert_array_equal(np.array(losses), np.array(want_losses))
    for p, w in zip(model.parameters(), want_weights, strict=True):
        np.testing.assert_array_equal(p.data, w)


@pytest.mark.parametrize(
    "example,match",
    [
        ((np.zeros((4, 1, 12, 12), np.float32),), "pair"),
        ((np.zeros((4, 1, 12, 12), np.float64), np.zeros(4, np.int64)), "float32"),
        ((np.zeros((4, 1, 12, 12), np.float32), np.zeros(3, np.int64)), "integer targets"),
        ((np.zeros((4, 1, 12, 12), np.float32), np.zeros(4, np.float32)), "integer targets"),
        ((np.zeros((4, 2, 12, 12), np.float32), np.zeros(4, np.int64)), "channels"),
    ],
)
def test_bad_example_batch_is_an_argument_error(example, match):
    model = _model()
    with pytest.raises(ArgumentError, match=match):
        graph.capture(model, class_loss, optim.SGD(model.parameters(), 0.1), example)


def test_batch_must_match_the_example_beyond_the_batch_axis():
    model = _model()
    with pytest.warns(CaptureWarning):
        step = graph.capture(model, class_loss, optim.SGD(model.parameters(), 0.1), _batches(1)[0])
    x = np.zeros((6, 1, 10, 12), np.float32)
    with pytest.raises(ArgumentError, match=r"\(6, 1, 10, 12\)"):
        step(x, np.zeros(6, np.int64))
    with pytest.raises(ArgumentError, match="does not match"):
        step(np.zeros((6, 1, 12, 12), np.float32), np.zeros(5, np.int64))
    with pytest.raises(ArgumentError, match="float64"):
        step(np.zeros((6, 1, 12, 12), np.float64), np.zeros(6, np.int64))


def _no_blocker(monkeypatch):
    monkeypatch.setattr(backend, "capture_blocker", lambda b: None)


def test_fp16_scaler_and_dropout_are_named_reasons(monkeypatch):
    """With the device question answered yes, the next reasons show (checked in this order)."""
    from engine import amp

    _no_blocker(monkeypatch)
    model = _model()
    opt = optim.SGD(model.parameters(), 0.1)
    with pytest.warns(CaptureWarning, match="fp16 loss scaling"):
        graph.capture(model, class_loss, opt, _batches(1)[0], scaler=amp.LossScaler())
    rng = np.random.default_rng(0)
    dropped = nn.Sequential(nn.Flatten(), nn.Dropout(0.5, rng=rng), nn.Linear(144, 3, rng=rng))
    with pytest.warns(CaptureWarning, match="Dropout"):
        graph.capture(dropped, class_loss, optim.SGD(dropped.parameters(), 0.1), _batches(1)[0])


def test_a_failed_recording_warns_once_and_stays_eager(monkeypatch):
    """Capture attempted where it cannot work (NumPy arrays have no cupy.cuda): the first call is
    the warm-up eager step, the recording fails with one warning, and later calls run eagerly,
    still the plain step bit for bit, the optimizer's host state untouched by the attempt."""
    _no_blocker(monkeypatch)
    data = _batches(3)
    with backend.use_kernels("numpy"):
        want_weights, _ = _eager_reference("adam", data)
        model = _model()
        opt = _optimizer("adam", model)
        step = graph.capture(model, class_loss, opt, data[0])  # no warning yet: it will try
        with pytest.warns(CaptureWarning, match="capture: AttributeError") as rec:
            step(*data[0])
        assert len(rec) == 1 and not step.captured and not step.graphs
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for x, t in data[1:]:
                step(x, t)
    assert opt.steps == 3
    for p, w in zip(model.parameters(), want_weights, strict=True):
        np.testing.assert_array_equal(p.data, w)


class _SyncFn(Function):
    """Stands in for an op that syncs to the host inside a recorded step."""

    def forward(self, x):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted")


def test_innermost_op_names_the_function_that_failed():
    with pytest.raises(RuntimeError) as info:
        F.relu(_SyncFn.apply(np.ones(3, np.float32)))
    assert graph._innermost_op(info.value) == "_SyncFn"
    assert graph._innermost_op(ValueError("no traceback")) is None


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_device_hyper_updates_like_host_numbers(opt_name):
    """The 0-d arrays a graph reads for lr and the step number (the parameters' dtype) give the
    host numbers' update: SGD bit for bit; Adam's bias correction in float32 instead of float64,
    so within float32 rounding (numpy kernels: the generic ones cupy_cuda shares)."""
    data = _batches(3)
    with backend.use_kernels("numpy"):
        want_weights, _ = _eager_reference(opt_name, data)
        model = _model()
        opt = _optimizer(opt_name, model)
        for x, t in data:
            step_no, lr = np.zeros((), np.float32), np.zeros((), np.float32)
            step_no.fill(opt.steps + 1)
            lr.fill(opt.lr)
            with opt.device_hyper(step_no, lr):
                opt.zero_grad()
                class_loss(model(Tensor(x)), t).backward()
                opt.step()
    for p, w in zip(model.parameters(), want_weights, strict=True):
        if opt_name == "sgd":
            np.testing.assert_array_equal(p.data, w)
        else:
            np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)
    assert opt._device_hyper is None and opt.hyper() == (3, opt.lr)


def test_capture_blocker_reasons(monkeypatch):
    cpu = backend.backend_for("cpu")
    assert backend.capture_blocker(cpu) == f"{cpu.flavour}_cpu has no graphs"
    fake = backend.Backend("cuda", "cupy", np, None, frozenset())
    monkeypatch.setattr(gemm, "GEMM", "cublas")
    assert "cuBLAS GEMM in conv2d_forward" in backend.capture_blocker(fake)
    monkeypatch.setattr(gemm, "GEMM", "own")
    assert backend.capture_blocker(fake) is None
    numba_cuda = backend.Backend("cuda", "numba", np, None, frozenset())
    assert "numba_cuda" in backend.capture_blocker(numba_cuda)


def test_fit_with_capture_equals_fit_without():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    weights = []
    for capture in (False, True):
        model = _model()
        opt = optim.Adam(model.parameters(), lr=1e-2)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            history = fit(model, opt, (x, y), epochs=2, batch_size=16, progress=False,
                          capture=capture)  # fmt: skip
        assert [str(w.message) for w in rec if w.category is CaptureWarning] == (
            [f"capture: {backend.backend_for('cpu').flavour}_cpu has no graphs; the step runs "
             "eagerly"] if capture else []
        )  # fmt: skip
        weights.append(([p.data.copy() for p in model.parameters()], history.epochs))
    (w0, h0), (w1, h1) = weights
    assert h0 == h1
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
def test_captured_step_equals_eager_on_cupy(monkeypatch):
    """On a GPU with the own GEMM kernels: the captured step replays the eager step's results
    (SGD; loss per batch and final weights), batch sizes 6 and 4 each with their own graph.
    Needs every product off cuBLAS: the dense layers reach the own GEMM through the `matmul`
    kernel; were one product left on cuBLAS the capture would fall back, `step.reason` naming it."""
    if not backend.cuda_available():
        pytest.skip("no CUDA GPU")
    monkeypatch.setattr(gemm, "GEMM", "own")
    data = _batches(5) + [_batches(1, n=4, seed=9)[0]]
    results = []
    for capture in (False, True):
        model = _model().to("cuda")
        opt = _optimizer("sgd", model)
        if capture:
            step = graph.capture(model, class_loss, opt, data[0])
            losses = [float(step(x, t)) for x, t in data]
            assert step.captured, step.reason
        else:
            losses = []
            for x, t in data:
                opt.zero_grad()
                loss = class_loss(model(Tensor(x).to("cuda")), backend.to_device(t, "cuda"))
                loss.backward()
                opt.step()
                losses.append(loss.item())
        results.append((losses, [p.numpy() for p in model.parameters()]))
    (l0, w0), (l1, w1) = results
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
