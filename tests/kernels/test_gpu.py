"""What only a GPU can show, on both cuda flavours (cupy, numba): streams, devices, training.

The gradient checks, forward oracles and behaviour tests of every op and layer are not here: the
shared suite (tests/ops, tests/nn) runs each of them on every backend, cuda:cupy and cuda:numba
included, with its inputs on the device; tests/kernels/test_parity.py compares every kernel of the
cuda flavours with kernels/numpy_cpu. This file keeps what those cannot express:
- streams: kernels launched on a non-default CuPy stream are ordered with it;
- devices: Tensor.to / Module.to round trips; an op on two devices raises DeviceError naming both;
  an invalid class target gives a NaN loss on cuda (on the CPU it raises);
- cpu and cuda in one test: optimizer steps, and the seed CNN trained from the same start.
Every test carries the `gpu` marker: tests/conftest.py skips them (reported as skipped) where no
CUDA device answers, and `pytest -m gpu` runs them with the shared suite's cuda cases on a GPU
machine (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import engine.functional as F
import models
from engine import backend, nn, optim
from engine.data.phantoms import make_phantoms
from engine.errors import DeviceError
from engine.function import no_grad
from engine.tensor import Tensor
from tests.conftest import TOL, backend_params, use_backend

pytestmark = pytest.mark.gpu


@pytest.fixture(params=backend_params("cuda"))
def gpu(request):
    """The cuda Backend of one flavour (`.xp` is cupy, `.flavour` "cupy" or "numba"); the ops inside
    run on that flavour. Unlike the shared `backend` fixture, a test here may also run on the CPU."""
    with use_backend(request.param) as chosen:
        yield chosen


# ---- streams ----
def test_gpu_kernels_run_on_cupys_current_stream(gpu):
    """Kernels launched while a non-default CuPy stream is current are ordered with it."""
    cp = gpu.xp
    x = np.random.default_rng(0).standard_normal((4, 3, 9, 9)).astype(np.float32)
    with cp.cuda.Stream(non_blocking=True):
        y, _ = gpu.k.max_pool2d_forward(cp.asarray(x), (2, 2), (2, 2), (0, 0))
        got = cp.asnumpy(y)  # asnumpy on the current stream waits for the kernel
    np.testing.assert_array_equal(got, x[:, :, :8, :8].reshape(4, 3, 4, 2, 4, 2).max(axis=(3, 5)))


def test_gpu_slice_reductions_run_on_cupys_current_stream(gpu):
    """The normalisation statistics (on numba_cuda a block per slice, its own launch path) are
    ordered with a non-default CuPy stream too: long slices and short ones, offset means."""
    cp = gpu.xp
    rng = np.random.default_rng(0)
    for shape in [(8, 16, 4096), (1, 300, 20)]:
        x = rng.standard_normal(shape) * 2 + 100
        with cp.cuda.Stream(non_blocking=True):
            mean, var = gpu.k.norm_moments(cp.asarray(x))
            got_mean, got_var = cp.asnumpy(mean), cp.asnumpy(var)
        np.testing.assert_allclose(got_mean, x.mean(axis=(0, 2)), **TOL["parity64"])
        np.testing.assert_allclose(got_var, x.var(axis=(0, 2)), **TOL["parity64"])


# ---- devices ----
def test_tensor_and_module_move_between_devices(gpu):
    cp = gpu.xp
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    on_gpu = x.to("cuda")
    assert on_gpu.device == "cuda" and isinstance(on_gpu.data, cp.ndarray) and on_gpu.requires_grad
    np.testing.assert_array_equal(on_gpu.to("cpu").data, x.data)
    model = nn.Linear(3, 2, rng=np.random.default_rng(0))
    before = model.weight.data.copy()
    model.to("cuda")
    assert all(p.device == "cuda" for p in model.parameters())
    assert model(on_gpu).device == "cuda"
    np.testing.assert_array_equal(model.to("cpu").weight.data, before)


def test_op_on_two_devices_names_both(gpu):
    a = Tensor(np.ones(3)).to("cuda")
    with pytest.raises(DeviceError, match="cpu and cuda"):
        a + Tensor(np.ones(3))


@pytest.mark.parametrize("ignore_index", [-100, None], ids=["masked", "fused"])
def test_out_of_range_target_on_cuda_gives_nan_loss_without_sync(gpu, ignore_index):
    """On the CPU an invalid target raises (tests/ops/test_loss.py); on cuda the check would cost
    two device syncs per step, so that row's loss and gradient are NaN instead, on both paths
    (with an ignore_index the masked one, without it the fused kernels)."""
    z = Tensor(np.zeros((2, 3)), requires_grad=True).to("cuda")
    loss = F.softmax_cross_entropy(z, Tensor(np.array([0, 3])).to("cuda"), ignore_index)
    loss.backward()
    assert np.isnan(loss.item())
    g = backend.to_device(z.grad, "cpu")
    assert np.isnan(g[1]).all() and np.isfinite(g[0]).all()


# ---- optimizers and training ----
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    ],
    ids=["sgd_nesterov", "adam"],
)
def test_gpu_optimizer_steps_match_cpu(gpu, make_opt):
    x, y = make_phantoms(16, seed=3)
    runs = []
    for device in ("cpu", "cuda"):
        model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(0)).astype(
            np.float64
        )
        model.to(device)
        opt = make_opt(model.parameters())
        xs, ys = Tensor(x.astype(np.float64)).to(device), Tensor(y).to(device)
        for _ in range(3):
            loss = F.softmax_cross_entropy(model(xs), ys)
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs.append([backend.to_device(p.data, "cpu") for p in model.parameters()])
    for cpu_p, gpu_p in zip(*runs, strict=True):
        np.testing.assert_allclose(gpu_p, cpu_p, **TOL["parity64"])


def _train_seed_cnn(device: str, x, y, x_test, y_test, epochs=3, batch=64) -> tuple[float, list]:
    """Accuracy on (x_test, y_test) after plain SGD from a fixed start; the per-epoch mean losses."""
    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(0)).to(device)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = np.random.default_rng(1)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in np.array_split(order.permutation(len(x)), len(x) // batch):
            loss = F.softmax_cross_entropy(
                model(Tensor(x[idx]).to(device)), Tensor(y[idx]).to(device)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / (len(x) // batch))
    with no_grad():
        logits = model(Tensor(x_test).to(device)).numpy()
    return float((logits.argmax(axis=1) == y_test).mean()), losses


@functools.cache
def _phantom_run(device: str, flavour: str):
    """(accuracy, losses) of the seed CNN trained on `device` with that kernel flavour, cached so
    the CPU baseline is trained once for both GPU flavours."""
    x, y = make_phantoms(1024, seed=0)
    x_test, y_test = make_phantoms(512, seed=1)
    with backend.use_kernels(flavour):
        return _train_seed_cnn(device, x, y, x_test, y_test)


def test_seed_cnn_trains_on_cuda_as_on_cpu(gpu):
    acc_cpu, losses_cpu = _phantom_run("cpu", "numpy")  # the reference kernels
    acc_gpu, losses_gpu = _phantom_run("cuda", gpu.flavour)
    # on 2 cores the CPU run reaches accuracy 0.84 and mean losses 0.79, 0.55, 0.48 (float32)
    assert losses_gpu[-1] < 0.7 * losses_gpu[0], losses_gpu  # it learns
    np.testing.assert_allclose(losses_gpu[0], losses_cpu[0], rtol=1e-2)  # same start, same path
    assert acc_gpu >= 0.75, (acc_gpu, acc_cpu)
    # float32 sums run in another order on the GPU, so the paths drift apart a little
    assert abs(acc_gpu - acc_cpu) <= 0.04, (acc_gpu, acc_cpu)


# ---- the cupy flavour's own GEMM (kernels/cupy_cuda/gemm.py) against cuBLAS ----
# seed CNN step products at batch 8 as (M, N, K): conv1/conv2 forward channel-major, their
# weight gradients (with the ones row), conv2's input-gradient columns, and the dense layers;
# then odd shapes that cross tile edges
_GEMM_SHAPES = [
    (32, 8 * 676, 9),
    (32, 10, 8 * 676),
    (64, 8 * 121, 288),
    (64, 289, 8 * 121),
    (288, 8 * 121, 64),
    (8, 64, 1600),
    (64, 1600, 8),
    (8, 10, 64),
    (1, 1, 1),
    (37, 129, 65),
    (130, 3, 17),
]


@pytest.fixture
def own_gemm_module(monkeypatch):
    """kernels.cupy_cuda.gemm with GEMM = "own" and no tensor cores (reset after the test)."""
    from kernels.cupy_cuda import gemm

    if not backend.cuda_available():
        pytest.skip("no CUDA device")
    monkeypatch.setattr(gemm, "GEMM", "own")
    monkeypatch.setattr(gemm, "MMA", "")
    return gemm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_own_gemm_matches_cublas_every_transpose(own_gemm_module, dtype):
    cp = backend.backend_for("cuda").xp
    rng = np.random.default_rng(0)
    for M, N, K in _GEMM_SHAPES:
        for ta in (False, True):
            for tb in (False, True):
                a = cp.asarray(rng.standard_normal((K, M) if ta else (M, K)).astype(dtype))
                b = cp.asarray(rng.standard_normal((N, K) if tb else (K, N)).astype(dtype))
                a, b = (a.T if ta else a), (b.T if tb else b)
                got = cp.asnumpy(own_gemm_module.matmul(a, b))
                ref = cp.asnumpy(cp.matmul(a, b))
                tol = 1e-5 * np.sqrt(K) if dtype == np.float32 else 1e-12 * np.sqrt(K)
                np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=f"{M, N, K}")


@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
def test_own_tensor_core_gemm_matches_rounded_operands(own_gemm_module, monkeypatch, mode):
    """mg_gemm_mma (PTX mma.sync, sm_80+; a CUDA-core loop before) against cuBLAS on the
    operands rounded to the MMA type: float32 accumulation, so float32-size differences."""
    torch = pytest.importorskip("torch")
    cp = backend.backend_for("cuda").xp
    monkeypatch.setattr(own_gemm_module, "MMA", mode)
    rng = np.random.default_rng(1)
    torch_type = {"tf32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mode]
    for M, N, K in [(64, 1600, 8), (8, 64, 1600), (37, 129, 65), (288, 968, 64)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        if torch_type is None:  # TF32: 10 mantissa bits, round to nearest (ties away)
            ra, rb = ((x.view(np.uint32) + 0x1000) & 0xFFFFE000 for x in (a, b))
            ra, rb = ra.astype(np.uint32).view(np.float32), rb.astype(np.uint32).view(np.float32)
        else:
            ra, rb = (torch.from_numpy(x).to(torch_type).float().numpy() for x in (a, b))
        got = cp.asnumpy(own_gemm_module.matmul(cp.asarray(a), cp.asarray(b)))
        ref = ra.astype(np.float64) @ rb.astype(np.float64)
        np.testing.assert_allclose(
            got, ref, rtol=1e-4, atol=1e-4 * np.sqrt(K), err_msg=f"{M, N, K}"
        )


_CONV_LAYERS = [  # (x shape, W shape, stride, padding): the seed CNN's layers and odd ones
    ((8, 1, 28, 28), (32, 1, 3, 3), (1, 1), (0, 0)),
    ((8, 32, 13, 13), (64, 32, 3, 3), (1, 1), (0, 0)),
    ((3, 5, 11, 9), (7, 5, 3, 2), (2, 1), (1, 0)),
]


@pytest.mark.parametrize("layer", range(len(_CONV_LAYERS)))
def test_own_conv_matches_the_cublas_path(own_gemm_module, monkeypatch, layer):
    """conv2d forward/backward and the fused conv-ReLU-pool pair with GEMM = "own" (implicit
    GEMM) against the same launchers with GEMM = "cublas" (im2col + cuBLAS), float32."""
    from kernels.cupy_cuda import launchers

    cp = backend.backend_for("cuda").xp
    xs, ws, s, p = _CONV_LAYERS[layer]
    rng = np.random.default_rng(layer)
    x = cp.asarray(rng.standard_normal(xs).astype(np.float32))
    W = cp.asarray((rng.standard_normal(ws) * 0.3).astype(np.float32))
    b = cp.asarray(rng.standard_normal(ws[0]).astype(np.float32))
    pool = ((2, 2), (2, 2), (0, 0))

    def run():
        y = launchers.conv2d_forward(x, W, b, s, p)
        gy = cp.asarray(np.random.default_rng(9).standard_normal(y.shape).astype(np.float32))
        out = [y, launchers.conv2d_backward_input(gy, W, xs, s, p)]
        out.append(launchers.conv2d_backward_weight(gy, x, ws[2:], s, p))
        if y.shape[2] >= 2 and y.shape[3] >= 2:
            yp, argmax = launchers.conv2d_relu_max_pool2d_forward(x, W, b, s, p, *pool)
            gp = cp.asarray(np.random.default_rng(8).standard_normal(yp.shape).astype(np.float32))
            back = launchers.conv2d_relu_max_pool2d_backward(
                gp, yp, argmax, x, W, s, p, *pool, True
            )
            out += [yp, *back]
        return [cp.asnumpy(a) for a in out]

    own = run()
    monkeypatch.setattr(own_gemm_module, "GEMM", "cublas")
    ref = run()
    for i, (g, r) in enumerate(zip(own, ref, strict=True)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3, err_msg=f"output {i}")


def test_own_gemm_conv_step_captures_in_a_cuda_graph(own_gemm_module):
    """What the own GEMM is for: conv forward + dense product captured in a CUDA graph (cuBLAS
    refuses capture in CuPy) and replayed, equal to the eager results."""
    from kernels.cupy_cuda import launchers

    cp = backend.backend_for("cuda").xp
    rng = np.random.default_rng(2)
    x = cp.asarray(rng.standard_normal((4, 3, 10, 10)).astype(np.float32))
    W = cp.asarray(rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    D = cp.asarray(rng.standard_normal((8 * 64, 5)).astype(np.float32))

    def step():  # the conv output is returned too: its memory must outlive the capture
        y = launchers.conv2d_forward(x, W, None, (1, 1), (0, 0))
        return y, own_gemm_module.matmul(y.reshape(4, -1), D)

    eager = cp.asnumpy(step()[1])  # compiles the kernels and fills the memory pool first
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        captured = step()
        graph = stream.end_capture()
    x[...] = 0  # the replay reads the current x
    cp.cuda.Device().synchronize()
    graph.launch(stream)
    stream.synchronize()
    np.testing.assert_array_equal(cp.asnumpy(captured[1]), np.zeros_like(eager))
    x[...] = cp.asarray(rng.standard_normal(x.shape).astype(np.float32))
    cp.cuda.Device().synchronize()
    graph.launch(stream)
    stream.synchronize()
    expected = cp.asnumpy(step()[1])
    np.testing.assert_allclose(cp.asnumpy(captured[1]), expected, rtol=1e-6, atol=1e-5)
