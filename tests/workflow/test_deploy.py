"""NumPy-only inference (engine.deploy) equals the engine, in a process where Numba, CuPy, pydicom,
SciPy and matplotlib cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import engine.functional as F
import models
from engine import deploy, nn
from engine.checkpoint import save_checkpoint
from engine.errors import SerializationError
from engine.train import predict_logits, predict_proba

ROOT = Path(__file__).resolve().parents[2]

BLOCKED_RUN = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"numba", "cupy", "pydicom", "scipy", "matplotlib"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    from engine.deploy import load

    net = load(sys.argv[1])
    np.save(sys.argv[3], net(np.load(sys.argv[2])))
    np.save(sys.argv[4], net.predict_proba(np.load(sys.argv[2]), batch_size=3))
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
)

ARCHITECTURES = [("seed_cnn", {}), ("lenet5", {}), ("mlp", {"hidden": 16})]


def test_numpy_only_inference_equals_the_engine(tmp_path):
    x = np.random.default_rng(1).random((7, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, kwargs in ARCHITECTURES:
        model = models.get(name, num_classes=3, rng=np.random.default_rng(0), **kwargs)
        path = save_checkpoint(tmp_path / f"{name}.npz", model)
        out, prob = tmp_path / f"{name}_logits.npy", tmp_path / f"{name}_probs.npy"
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                BLOCKED_RUN,
                str(path),
                str(tmp_path / "x.npy"),
                str(out),
                str(prob),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
        # seed_cnn and mlp run as deploy's compiled plan, lenet5 (tanh, avg) interpreted: equal
        # to float32 rounding (other summation orders)
        np.testing.assert_allclose(
            np.load(out), predict_logits(model, x), rtol=1e-5, atol=1e-6, err_msg=name
        )
        np.testing.assert_allclose(np.load(prob), predict_proba(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_numpy_conv_and_pools_match_the_engine(rng, stride, padding):
    layers = nn.Sequential(
        nn.Conv2d(2, 3, (3, 2), stride=stride, padding=padding, rng=rng),
        nn.Sigmoid(),
        nn.MaxPool2d(2, stride=1, padding=1),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.Tanh(),
        nn.Dropout(0.5, rng=rng),
        nn.Flatten(),
    ).astype(np.float64)
    x = rng.standard_normal((2, 2, 9, 8))
    with_engine = predict_logits(layers, x)
    from engine.checkpoint import Checkpoint

    net = deploy.NumpyModel(
        Checkpoint(
            path=Path("mem"), model_config=None, spec=layers.spec(), weights=layers.state_dict()
        )
    )
    np.testing.assert_allclose(net(x), with_engine, rtol=1e-12, atol=1e-12)


def test_model_without_layer_list_is_refused(tmp_path):
    class Custom(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2, rng=np.random.default_rng(0))

        def forward(self, x):
            return self.fc(x)

    path = save_checkpoint(tmp_path / "custom.npz", Custom())
    with pytest.raises(SerializationError, match="no layer spec"):
        deploy.load(path)


def test_unknown_layer_type_in_a_file_is_refused(tmp_path, rng, monkeypatch):
    """A spec type without a FORWARD entry, nested inside the Sequential, names the file and type."""

    class Swish(nn.Module):
        def forward(self, x):
            return x * F.sigmoid(x)

    monkeypatch.setitem(nn.LAYERS, "Swish", Swish)
    model = nn.Sequential(nn.Linear(3, 3, rng=rng), nn.Sequential(nn.ReLU(), Swish()))
    path = save_checkpoint(tmp_path / "swish.npz", model)
    with pytest.raises(SerializationError, match=r"swish.npz: unknown layer type 'Swish'"):
        deploy.load(path)


# ---- the compiled plan (NumpyModel.plan): NHWC buffers, one product per layer ----


def _ckpt(model):
    from engine.checkpoint import Checkpoint

    return Checkpoint(
        path=Path("mem"), model_config=None, spec=model.spec(), weights=model.state_dict()
    )


PLANNED = [  # (network, input shape): padding, stride, 3x3 pools, odd sizes, no bias, Flatten first
    (
        lambda rng: nn.Sequential(
            nn.Conv2d(2, 5, 3, padding=1, rng=rng),
            nn.MaxPool2d(3),
            nn.ReLU(),
            nn.Conv2d(5, 4, (2, 3), stride=(2, 1), padding=(1, 0), bias=False, rng=rng),
            nn.ReLU(),
            nn.Dropout(0.5, rng=rng),
            nn.Flatten(),
            nn.Linear(4 * 2 * 1, 7, rng=rng),
            nn.ReLU(),
            nn.Linear(7, 3, bias=False, rng=rng),
        ),
        (2, 11, 10),
    ),
    (
        lambda rng: nn.Sequential(nn.Conv2d(3, 40, 1, rng=rng), nn.ReLU(), nn.MaxPool2d(2)),
        (3, 5, 7),
    ),
    (lambda rng: nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.Flatten()), (1, 6, 5)),
    (lambda rng: models.get("mlp", hidden=9, num_classes=3, rng=rng), (1, 28, 28)),
    (lambda rng: nn.Sequential(nn.Conv2d(2, 3, 2, rng=rng), nn.MaxPool2d(2)), (2, 7, 5)),  # no ReLU
]


@pytest.mark.parametrize("chunk_bytes,products", [(1, 7 + 7 + 2), (20000, 4 + 1 + 2)])
def test_plan_in_uneven_chunks_equals_the_interpreter(rng, monkeypatch, chunk_bytes, products):
    """Chunks of 1 image, then of a few with a smaller last one (each chunk size has its own
    product buffer, with the zero block that takes ReLU into the pool's max)."""
    monkeypatch.setattr(deploy, "CHUNK_BYTES", chunk_bytes)
    model = PLANNED[0][0](rng).eval()
    net, interpreted = deploy.NumpyModel(_ckpt(model)), deploy.NumpyModel(_ckpt(model), False)
    x = rng.standard_normal((7, *PLANNED[0][1])).astype(np.float32)
    np.testing.assert_allclose(net(x), interpreted(x), rtol=1e-5, atol=1e-5)
    steps = net.plan.local.bound[x.shape].steps
    # both convs in 7 chunks of 1 image, or the first in 2 + 2 + 2 + 1 images; 2 dense products
    assert sum(getattr(s, "func", None) is np.matmul for s in steps) == products


@pytest.mark.parametrize("case", range(len(PLANNED)))
def test_compiled_plan_equals_the_interpreter(rng, case):
    """Every batch size (buffers bound per shape, rebound after others) to float32 rounding,
    the same argmax; the engine itself agrees."""
    build, shape = PLANNED[case]
    model = build(rng).eval()
    net, interpreted = deploy.NumpyModel(_ckpt(model)), deploy.NumpyModel(_ckpt(model), False)
    assert net.plan is not None and interpreted.plan is None
    for n in (1, 5, 32, 1, 5):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        got, expected = net(x), interpreted(x)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, predict_logits(model, x), rtol=1e-5, atol=1e-5)
        if got.ndim == 2 and got.shape[1] > 1:
            np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_plan_float64_and_threads(rng):
    """A float64 model runs in float64 (to 1e-12); threads get their own buffers."""
    import threading

    model = PLANNED[0][0](rng).eval().astype(np.float64)
    net = deploy.NumpyModel(_ckpt(model))
    xs = [rng.standard_normal((3, 2, 11, 10)) for _ in range(4)]
    expected = [deploy.NumpyModel(_ckpt(model), False)(x) for x in xs]
    assert net(xs[0]).dtype == np.float64
    np.testing.assert_allclose(net(xs[0]), expected[0], rtol=1e-12, atol=1e-12)
    got = [None] * len(xs)

    def work(i):
        for _ in range(20):
            got[i] = net(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_networks_outside_the_plan_are_interpreted(rng):
    """lenet5 (Tanh, AvgPool), an overlapping max-pool, a conv after Flatten: no plan, the
    interpreter's outputs; an input the plan cannot take falls back to the interpreter too."""
    for model in (
        models.get("lenet5", num_classes=3, rng=rng),
        nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.MaxPool2d(3, stride=2)),
        nn.Sequential(nn.Residual(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, rng=rng)))),
    ):
        assert deploy.NumpyModel(_ckpt(model)).plan is None
    net = deploy.NumpyModel(_ckpt(models.get("seed_cnn", num_classes=2, rng=rng)))
    x = rng.standard_normal((2, 1, 30, 30)).astype(np.float32)  # not the Linear's 28 x 28
    with pytest.raises(ValueError):
        net(x)
