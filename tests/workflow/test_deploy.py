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
        # same im2col + GEMM arithmetic: equal up to float32 summation order (tanh/avg in lenet5)
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
