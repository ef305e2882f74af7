"""Int8 post-training quantization (engine.quantize, engine.deploy's Quant* layers): kernels exact
in int32, the quantized file verified and about 4x smaller, accuracy on held-out phantoms kept."""

from __future__ import annotations

import numpy as np
import pytest

import models
from engine import deploy, nn, optim
from engine import quantize as Q
from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.data.phantoms import make_phantoms
from engine.errors import ArgumentError, SerializationError
from engine.train import fit
from kernels import numpy_cpu
from kernels.numpy_cpu import int8

PRE = {"source": "phantoms", "input_size": 28, "in_channels": 1}


def test_int8_matmul_is_exact_in_int32(rng):
    a = rng.integers(-127, 128, (37, 300)).astype(np.int8)
    b = rng.integers(-127, 128, (300, 5)).astype(np.int8)
    a[0], b[:, 0] = -127, -127  # the largest sum: 300 * 127^2 overflows int16, not int32
    expected = a.astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(int8.int8_matmul(a, b), expected)
    np.testing.assert_array_equal(int8.int8_matmul_nt(a, b.T.copy()), expected)
    numba_cpu = pytest.importorskip("kernels.numba_cpu.int8")
    got = numba_cpu.int8_matmul(a, b)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(numba_cpu.int8_matmul_nt(a, b.T.copy()), expected)
    strided = a[:, ::2].astype(np.int64) @ b[::2].astype(np.int64)  # non-contiguous inputs
    np.testing.assert_array_equal(numba_cpu.int8_matmul(a[:, ::2], b[::2]), strided)


@pytest.mark.parametrize("shape,k", [((2, 3, 7, 9), (2, 2)), ((1, 2, 5, 6, 7), (2, 3, 2))])
def test_deploy_tiled_max_pool_equals_the_kernel(rng, shape, k):
    """deploy's fast path for stride = kernel, no padding (odd sizes drop the last rows)."""
    x = rng.standard_normal(shape).astype(np.float32)
    spec = {"type": f"MaxPool{len(k)}d", "kernel_size": k, "stride": k, "padding": (0,) * len(k)}
    kernel = getattr(numpy_cpu, f"max_pool{len(k)}d_forward")(x, k, k, (0,) * len(k))[0]
    np.testing.assert_array_equal(deploy.FORWARD[spec["type"]](x, spec, {}, ""), kernel)


def test_weight_quantization_is_per_channel_symmetric(rng):
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * np.array([1, 10, 0.01, 0])[
        :, None, None, None
    ].astype(np.float32)
    q, s = Q.quantize_weight(W)
    assert q.dtype == np.int8 and s.shape == (4,)
    np.testing.assert_array_equal(np.abs(q[:3]).reshape(3, -1).max(1), 127)
    assert not q[3].any() and s[3] == 1
    np.testing.assert_allclose(q * s[:, None, None, None], W, atol=float(s.max()) / 2 + 1e-7)


def test_quantized_layers_follow_the_float_ones(rng):
    """Every quantizable type (2-D, 3-D, dense, nested in Residual) within a few quantization
    steps of float32, and the NumPy fallback equal to the Numba kernel to the bit."""
    model = nn.Sequential(
        nn.Conv3d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 5 * 3, 6),
    ).eval()
    block = nn.Sequential(
        nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1)), shortcut=nn.Conv2d(2, 2, 1)),
        nn.Flatten(),
        nn.Linear(2 * 6 * 6, 3),
    ).eval()
    for net, shape in ((model, (1, 4, 5, 3)), (block, (2, 6, 6))):
        ckpt = Checkpoint("<m>", None, net.spec(), net.state_dict())
        x = rng.standard_normal((8, *shape)).astype(np.float32)
        qckpt = Q.quantize(ckpt, x)
        types = str(qckpt.spec)
        assert "QuantLinear" in types and "QuantConv" in types and "'Conv" not in types
        y, yq = deploy.NumpyModel(ckpt)(x), deploy.NumpyModel(qckpt)(x)
        assert np.abs(yq - y).max() < 0.05 * np.abs(y).max()
        original, deploy._INT8[:] = list(deploy._INT8), [int8]  # NumPy's kernels
        try:
            np.testing.assert_array_equal(deploy.NumpyModel(qckpt)(x), yq)
        finally:
            deploy._INT8[:] = original


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """seed_cnn trained on phantoms (6 epochs: 4 left it at 0.896 held-out, under the 0.9 guard); (model file, train images, held-out set)."""
    x, y = make_phantoms(2500, size=28, seed=0)
    train, test = (x[:2000], y[:2000]), (x[2000:], y[2000:])
    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(0))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # the demo's settings
    fit(model, opt, train, test, epochs=6, batch_size=64, seed=0, progress=False)  # as the demo
    path = tmp_path_factory.mktemp("q") / "m.npz"
    save_checkpoint(path, model.eval(), preprocessing=PRE, classes=["no lesion", "lesion"])
    return path, train[0], test


def test_quantized_file_keeps_held_out_accuracy_and_is_4x_smaller(trained, tmp_path):
    path, images, (x, y) = trained
    ckpt = load_checkpoint(path)
    out = Q.save_quantized(Q.quantize(ckpt, images[:128]), tmp_path / "q.npz", {"samples": 128})
    net, qnet = deploy.load(path), deploy.load(out)
    acc, qacc = (np.mean(m(x).argmax(1) == y) for m in (net, qnet))
    assert acc > 0.9  # the model learned something, so the comparison means something
    assert abs(qacc - acc) <= 0.01, (acc, qacc)
    assert path.stat().st_size / out.stat().st_size > 3.5
    reread = load_checkpoint(out)
    assert reread.weights["0.weight"].dtype == np.int8 and reread.classes == ["no lesion", "lesion"]
    assert reread.train_state["quantization"] == {"samples": 128}
    with pytest.raises(SerializationError, match="q.npz"):  # a flipped byte is caught as ever
        data = bytearray(out.read_bytes())
        data[len(data) // 2] ^= 1
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "q.npz").write_bytes(bytes(data))
        deploy.load(tmp_path / "bad" / "q.npz")


def test_cli_quantize(trained, tmp_path, capsys):
    from engine.cli import main

    path, _, (x, y) = trained
    out = tmp_path / "m-int8.npz"
    args = ["quantize", str(path), "--calibration", "phantoms", "--out", str(out)]
    assert main([*args, "--samples", "64", "--percentile", "99.9"]) == 0
    said = capsys.readouterr().out
    assert "smaller" in said and "agrees" in said
    info = load_checkpoint(out).train_state["quantization"]
    assert info["samples"] == 64 and info["percentile"] == 99.9
    assert np.mean(deploy.load(out)(x).argmax(1) == y) > 0.9
    with pytest.raises(ArgumentError, match="percentile"):
        Q.quantize(load_checkpoint(path), x[:4], percentile=30)


def _int8_cases(rng):
    """Sums with exact ties after rescaling (scale 1/2: x.5 values) and values past +-127."""
    acc = rng.integers(-600, 600, (4, 2, 3, 5, 6)).astype(np.int32)
    scale = np.array([0.5, 0.5, 1, 0.25, 2e-3, 0], np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    return acc, scale, bias


def test_numba_int8_kernels_equal_numpy_to_the_bit(rng):
    """quantize_nhwc, int8_gemm_nt, requantize, dequantize: Numba's against the reference,
    into strided outputs (the plan writes inside padded buffers); ties round to even."""
    fast = pytest.importorskip("kernels.numba_cpu.int8")
    x = (rng.standard_normal((2, 4, 5, 3)) * 3).astype(np.float32)
    x[0, 0, 0] = [0.5, 1.5, -2.5]  # ties at scale 1
    for scale in (np.float32(1), np.float32(0.01)):
        want, got = (np.zeros((2, 6, 7, 3), np.int8) for _ in range(2))
        int8.quantize_nhwc(x, scale, want[:, 1:5, 1:6])
        fast.quantize_nhwc(x.transpose(0, 1, 2, 3), scale, got[:, 1:5, 1:6])
        np.testing.assert_array_equal(got, want)
    assert list(want[0, 1, 1]) == [0, 2, -2] or scale != 1
    a = rng.integers(-127, 128, (37, 300)).astype(np.int8)
    bt = rng.integers(-127, 128, (7, 300)).astype(np.int8)
    a[0], bt[0] = -127, -127
    want, got = np.empty((37, 7), np.int32), np.empty((37, 7), np.int32)
    int8.int8_gemm_nt(a, bt, want)
    fast.int8_gemm_nt(a, bt, got)
    np.testing.assert_array_equal(want, a.astype(np.int64) @ bt.astype(np.int64).T)
    np.testing.assert_array_equal(got, want)
    acc, scale, bias = _int8_cases(rng)
    for b in (bias, None):
        for relu in (True, False):
            want, got = (np.zeros((2, 4, 6, 6), np.int8) for _ in range(2))
            int8.requantize(acc, scale, b, relu, np.float32(0.5), want[:, 1:, 1:])
            fast.requantize(acc, scale, b, relu, np.float32(0.5), got[:, 1:, 1:])
            np.testing.assert_array_equal(got, want)
            assert want.min() == -127 * (not relu) and want.max() == 127
            want, got = (np.zeros((2, 3, 5, 6), np.float32) for _ in range(2))
            int8.dequantize(acc, scale, b, relu, want)
            fast.dequantize(acc, scale, b, relu, got)
            np.testing.assert_array_equal(got, want)


def test_int8_plan_equals_the_interpreter_to_the_bit(rng):
    """The compiled int8 plan (NHWC, pooled int32 sums, fused epilogue) against the
    interpreter, with the Numba kernels and with NumPy's; padding, stride, 3x3 pools."""
    model = nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(3),
        nn.Conv2d(5, 6, 2, stride=(2, 1), padding=(1, 0), rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 1 * 1, 7, rng=rng),
        nn.ReLU(),
        nn.Linear(7, 3, rng=rng),
    ).eval()
    x = rng.standard_normal((40, 2, 11, 10)).astype(np.float32)
    qckpt = Q.quantize(Checkpoint("<m>", None, model.spec(), model.state_dict()), x[:16])
    expected = deploy.NumpyModel(qckpt, compiled=False)(x)
    original, direct = list(deploy._INT8), (deploy.DIRECT_TAPS, deploy.DIRECT_TAPS_PAIRS)
    try:
        for module in (original or [None])[:1] + [int8]:
            deploy._INT8[:] = [module] if module is not None else []
            for limits in (direct, (0, 0)):  # the direct convs, then columns + product
                deploy.DIRECT_TAPS, deploy.DIRECT_TAPS_PAIRS = limits
                net = deploy.NumpyModel(qckpt)
                assert net.plan is not None
                for n in (1, 33, 40):
                    np.testing.assert_array_equal(net(x[:n]), expected[:n])
    finally:
        deploy._INT8[:] = original
        deploy.DIRECT_TAPS, deploy.DIRECT_TAPS_PAIRS = direct


# (m, k, n): odd k, k = 1, k = 2, n not a multiple of 8 or of 16, rows not a multiple of 6
PAIR_PRODUCTS = [(13, 7, 5), (6, 1, 16), (7, 2, 24), (1, 3, 1), (20, 45, 33)]


@pytest.mark.parametrize("shape", PAIR_PRODUCTS)
def test_int8_pairs_product_equals_numpy_to_the_bit(rng, shape):
    """The AVX2 micro-kernel (_gemm_pairs on pack_pairs' panels, int8 or int16 columns) and the
    plan's bound product against the reference and an int64 product, with -128 / 127 whole
    rows (the largest sums of both signs) and a whole row of -128 x -128."""
    fast = pytest.importorskip("kernels.numba_cpu.int8")
    if not fast.HAS_PMADDWD:
        pytest.skip("no AVX2: bind_gemm_nt uses _gemm_nt")
    m, k, n = shape
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    bt = rng.integers(-128, 128, (n, k)).astype(np.int8)
    a[0], bt[0] = -128, -128
    a[-1], bt[-1] = 127, -128
    panels = fast.pack_pairs(bt)  # [q, kk, h, j, t] = bt[16 q + 8 h + j, 2 kk + t], 0 outside
    q, kk, h, j, t = np.unravel_index(np.arange(len(panels)), (-(-n // 16), -(-k // 2), 2, 8, 2))
    row, col = 16 * q + 8 * h + j, 2 * kk + t
    inside = (row < n) & (col < k)
    np.testing.assert_array_equal(panels[inside], bt[row[inside], col[inside]])
    assert not panels[~inside].any()
    want = np.empty((m, n), np.int32)
    int8.int8_gemm_nt(a, bt, want)
    np.testing.assert_array_equal(want, a.astype(np.int64) @ bt.astype(np.int64).T)
    for cols in (a, a.astype(np.int16)):
        got = np.full((m, n), -7, np.int32)
        fast._gemm_pairs(cols, panels, got)
        np.testing.assert_array_equal(got, want)
    got = np.full((m, n), -7, np.int32)
    step = fast.bind_gemm_nt(a, bt, got)
    assert step.func is fast._gemm_pairs
    step()
    np.testing.assert_array_equal(got, want)


def test_int8_plan_with_pairs_and_without_equals_the_interpreter(rng, monkeypatch):
    """The compiled int8 plan on the micro-kernel (the conv direct, _conv_pairs, on int16 codes;
    or, with DIRECT_TAPS_PAIRS 0, columns and _gemm_pairs) and on its fallback (_gemm_nt on
    int8 codes): all equal the interpreter to the bit (a conv of 36 taps; 40 rows: blocks of 6
    and a remainder; 6 and 3 outputs: part of a panel)."""
    fast = pytest.importorskip("kernels.numba_cpu.int8")
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3, rng=rng),
    ).eval()
    x = rng.standard_normal((40, 4, 4, 5)).astype(np.float32)
    qckpt = Q.quantize(Checkpoint("<m>", None, model.spec(), model.state_dict()), x[:16])
    expected = deploy.NumpyModel(qckpt, compiled=False)(x)
    products, convs = [], []
    for name, log in (("bind_gemm_nt", products), ("bind_conv_block", convs)):
        bind = getattr(fast, name)
        monkeypatch.setattr(
            fast, name, lambda *args, b=bind, log=log: log.append(b(*args)) or log[-1]
        )
    monkeypatch.setattr(deploy, "_INT8", [fast])
    runs = [(False, 1 << 30)] + ([(True, 1 << 30), (True, 0)] if fast.HAS_PMADDWD else [])
    for pairs, direct in runs:
        monkeypatch.setattr(fast, "PAIRS", pairs)
        monkeypatch.setattr(deploy, "DIRECT_TAPS_PAIRS", direct)
        net, products[:], convs[:] = deploy.NumpyModel(qckpt), [], []
        assert net.plan is not None
        for n in (1, 40):
            np.testing.assert_array_equal(net(x[:n]), expected[:n])
        codes = np.int16 if pairs else np.int8
        assert all(buf.dtype == codes for buf in net.plan.local.bound[(40, 4, 4, 5)].buffers)
        kernel = fast._gemm_pairs if pairs else fast._gemm_nt
        assert all(step.func is kernel for step in products)
        if pairs and direct:  # the conv direct on the micro-kernel, the dense layer a product
            assert len(products) == 2 and [step.func for step in convs] == [fast._conv_pairs] * 2
        else:  # 2 layers x 2 batch sizes, columns and products
            assert len(products) == 4 and not convs


def _naive_conv_sums(xpad, wk, stride, pool, oh, ow):
    """Loop oracle: int64 sums (p*p, n, oh, ow, oc) of the conv outputs each pool tile uses."""
    kh, kw, c, oc = wk.shape
    (sh, sw), p = stride, pool
    sums = np.zeros((p * p, len(xpad), oh, ow, oc), np.int64)
    for u, v, b, i, j in np.ndindex(p, p, len(xpad), oh, ow):
        y, x = (i * p + u) * sh, (j * p + v) * sw
        window = xpad[b, y : y + kh, x : x + kw].astype(np.int64)  # (kh, kw, c)
        sums[u * p + v, b, i, j] = np.tensordot(window, wk.astype(np.int64), 3)
    return sums


# (n, padded h, w, c, kh, kw, oc, stride, pool): K = 1, K = 9 with one channel (the first conv),
# K and oc not multiples of the vector width, strides, pools 1 / 2 / 3, odd sizes left over; rows
# of 4+ outputs without a pool (the micro-kernel's groups of 4 and the rest), window rows of even
# and odd length (kw c)
CONV_BLOCKS = [
    (2, 3, 4, 1, 1, 1, 3, (1, 1), 1),
    (3, 9, 8, 1, 3, 3, 32, (1, 1), 2),
    (2, 8, 9, 3, 2, 3, 13, (2, 1), 2),
    (1, 11, 10, 2, 3, 3, 5, (1, 1), 3),
    (3, 9, 14, 4, 3, 3, 20, (1, 1), 1),
    (2, 9, 12, 3, 3, 3, 17, (1, 2), 1),
    (2, 7, 8, 6, 3, 3, 33, (1, 1), 2),
    # windows ending at the buffer's last code with rows of odd length (kw c = 3): the pair read
    # past the row would be past the buffer (the copied-window path), in a tile and in a row of 4
    (2, 8, 8, 1, 3, 3, 32, (1, 1), 2),
    (2, 5, 6, 1, 3, 3, 8, (1, 1), 1),
]


@pytest.mark.parametrize("case", CONV_BLOCKS)
def test_int8_conv_block_equals_the_loop_oracle_and_numba_to_the_bit(rng, case, monkeypatch):
    """conv_block (the direct int8 conv + pool + epilogue): NumPy's against naive loops and the
    reference epilogue, Numba's against NumPy's (plain and as the plan's prepared call; on the
    plain loops with int8 codes, and on the vpmaddwd micro-kernel, _conv_pairs, with int16
    codes in and out where the CPU has it), with the int8 extremes -128 / 127, into a strided
    view and into float32."""
    n, h, w, c, kh, kw, oc, stride, pool = case
    xpad = rng.integers(-128, 128, (n, h, w, c)).astype(np.int8)
    wk = rng.integers(-127, 128, (kh, kw, c, oc)).astype(np.int8)
    xpad[0, :kh, :kw], wk[..., 0] = -128, 127  # the first tile's first sum at its extreme
    oh, ow = ((h - kh) // stride[0] + 1) // pool, ((w - kw) // stride[1] + 1) // pool
    sums = _naive_conv_sums(xpad, wk, stride, pool, oh, ow)
    assert sums.min() == -128 * 127 * kh * kw * c  # the extreme was reached
    acc = sums.astype(np.int32)
    scale = (rng.random(oc) * 2e-3).astype(np.float32)
    fast = pytest.importorskip("kernels.numba_cpu.int8")
    # (module, codes, weights, micro-kernel): the plan's pairings (code_dtype), int8 / int16 wk
    runs = [(int8, xpad, wk, False), (fast, xpad, wk.astype(np.int16), False)]
    if fast.HAS_PMADDWD:
        runs.append((fast, xpad.astype(np.int16), wk, True))
    for bias in (rng.standard_normal(oc).astype(np.float32), None):
        for relu in (True, False):
            args = (scale, bias, relu)
            want = np.zeros((n, oh + 2, ow + 1, oc), np.int8)  # a padded next-layer buffer
            int8.requantize(acc, *args, np.float32(0.03), want[:, 1:-1, 1:])
            want_f = np.empty((n, oh, ow, oc), np.float32)
            int8.dequantize(acc, *args, want_f)
            for module, codes, wk_as, pairs in runs:
                monkeypatch.setattr(fast, "PAIRS", pairs)
                got = np.zeros_like(want, codes.dtype)
                module.conv_block(
                    codes, wk_as, stride, pool, *args, np.float32(0.03), got[:, 1:-1, 1:]
                )
                np.testing.assert_array_equal(got, want)
                got_f = np.empty_like(want_f)
                step = module.bind_conv_block(codes, wk_as, stride, pool, *args, 0, got_f)
                step()
                np.testing.assert_array_equal(got_f, want_f)
                assert (getattr(step, "func", None) is fast._conv_pairs) == pairs


def test_int8_bound_kernels_equal_the_plain_ones(rng):
    """bind_gemm_nt / bind_requantize / bind_dequantize: the plan's prepared calls, both flavours."""
    fast = pytest.importorskip("kernels.numba_cpu.int8")
    a = rng.integers(-128, 128, (5, 33)).astype(np.int8)
    bt = rng.integers(-127, 128, (3, 33)).astype(np.int8)
    acc, scale, bias = _int8_cases(rng)
    for module in (int8, fast):
        got = np.empty((5, 3), np.int32)
        module.bind_gemm_nt(a, bt, got)()
        np.testing.assert_array_equal(got, a.astype(np.int64) @ bt.astype(np.int64).T)
        want, got = np.empty((2, 3, 5, 6), np.int8), np.empty((2, 3, 5, 6), np.int8)
        int8.requantize(acc, scale, bias, True, np.float32(0.5), want)
        module.bind_requantize(acc, scale, bias, True, np.float32(0.5), got)()
        np.testing.assert_array_equal(got, want)
        want, got = np.empty((2, 3, 5, 6), np.float32), np.empty((2, 3, 5, 6), np.float32)
        int8.dequantize(acc, scale, None, False, want)
        module.bind_dequantize(acc, scale, None, False, got)()
        np.testing.assert_array_equal(got, want)
