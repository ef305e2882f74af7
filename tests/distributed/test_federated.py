"""Federated training with Flower: a server and three clients as separate processes on
127.0.0.1 reach central training's accuracy on the pooled data (within 3 points), and a
client sends only parameters and a count: no image, label, path or patient id."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from engine import backend
from tests.distributed.cases import write_phantom_site
from tests.distributed.conftest import ROOT

ROUNDS, LOCAL_EPOCHS, LR, BATCH = 4, 3, 5e-3, 16


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    base = tmp_path_factory.mktemp("sites")
    train = [write_phantom_site(base / f"site{k}", 30, 4, seed=20 + k) for k in range(3)]
    return train, write_phantom_site(base / "test", 30, 4, seed=23)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_sends_only_parameters_and_count(sites):
    from engine.federated import Plan, Site, get_weights

    pytest.importorskip("flwr", reason="federated tests need flwr (medgrad[dev])")
    plan = Plan(input_size=16, epochs=1, batch_size=BATCH, lr=LR)
    weights = get_weights(plan.build())
    with backend.use_kernels("numpy"):
        sent = Site(sites[0][0]).train(weights, plan.to_config(1))
    new, count, metrics = sent
    assert count == 120 and metrics == {}
    assert [w.shape for w in new] == [w.shape for w in weights]
    assert all(w.dtype.kind == "f" for w in new)
    assert any(not np.array_equal(a, b) for a, b in zip(new, weights, strict=True))
    # what goes on the wire: Flower's serialised Parameters hold no identifier or image
    from engine.federated import _flwr

    _flwr()
    from flwr.common import ndarrays_to_parameters

    wire = b"".join(ndarrays_to_parameters(new).tensors)
    labels = (sites[0][0] / "labels.csv").read_text()
    for word in ["P20_000", "IM000", "labels.csv", str(sites[0][0]), labels[:40]]:
        assert word.encode() not in wire
    assert sum(len(t) for t in ndarrays_to_parameters(new).tensors) < 4 * sum(w.nbytes for w in new)


def test_dp_update_is_clipped_and_epsilon_falls_with_noise():
    from engine.federated import dp_epsilon, privatize

    rng = np.random.default_rng(0)
    update = [np.full(50, 3.0), np.full((5, 5), -4.0)]
    clipped = privatize(update, clip=1.0, noise=0.0, rng=rng)
    norm = np.sqrt(sum(float((u**2).sum()) for u in clipped))
    assert norm == pytest.approx(1.0)
    noisy = privatize(update, clip=1.0, noise=0.5, rng=rng)
    assert not np.allclose(noisy[0], clipped[0])
    assert dp_epsilon(2.0, 4) < dp_epsilon(1.0, 4) < dp_epsilon(1.0, 8) < np.inf
    assert dp_epsilon(0.0, 1) == np.inf


@pytest.mark.slow
def test_three_sites_reach_central_accuracy(sites, tmp_path):
    pytest.importorskip("flwr", reason="federated tests need flwr (medgrad[dev])")
    from engine import optim
    from engine.checkpoint import load_model
    from engine.federated import Plan
    from engine.train import evaluate, fit
    from engine.workflow import load_data

    train_dirs, test_dir = sites
    address = f"127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ENGINE_KERNELS": "numpy",
        "NUMBA_NUM_THREADS": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    medgrad = [sys.executable, "-m", "engine", "federated"]
    server = subprocess.Popen(
        [
            *medgrad,
            "server",
            "--rounds",
            str(ROUNDS),
            "--min-clients",
            "3",
            "--address",
            address,
            "--out",
            str(tmp_path / "fed"),
            "--input-size",
            "16",
            "--local-epochs",
            str(LOCAL_EPOCHS),
            "--batch-size",
            str(BATCH),
            "--lr",
            str(LR),
            "--round-timeout",
            "60",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    clients = [
        subprocess.Popen(
            [*medgrad, "client", "--data", str(d), "--server", address, "--timeout", "60"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for d in train_dirs
    ]
    try:
        out = server.communicate(timeout=120)[0]
        for c in clients:
            c.communicate(timeout=30)
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
    assert server.returncode == 0, out[-3000:]
    assert f"round {ROUNDS}/{ROUNDS}: 3 sites" in out
    assert all(c.returncode == 0 for c in clients)

    with backend.use_kernels("numpy"):
        test = load_data(test_dir, input_size=16, classes=["0", "1"])
        federated, _ = load_model(tmp_path / "fed" / "model.npz")
        pooled = [load_data(d, input_size=16, classes=["0", "1"]) for d in train_dirs]
        x = np.concatenate([d.images for d in pooled])
        y = np.concatenate([d.labels for d in pooled])
        central = Plan(input_size=16).build()
        fit(
            central,
            optim.Adam(central.parameters(), lr=LR),
            (x, y),
            epochs=ROUNDS * LOCAL_EPOCHS,
            batch_size=BATCH,
            progress=False,
        )
        acc_fed = evaluate(federated, test.images, test.labels)["accuracy"]
        acc_central = evaluate(central, test.images, test.labels)["accuracy"]
    assert acc_central > 0.8  # central training learned the task: the comparison means something
    assert acc_fed >= acc_central - 0.03, (acc_fed, acc_central)


def test_fedprox_pulls_towards_the_global_weights():
    from engine import optim
    from engine.federated import _Proximal
    from engine.nn import Parameter

    p = Parameter(np.ones(3))
    opt = _Proximal(optim.SGD([p], lr=0.1), mu=2.0)  # anchor: the global weights, all 1
    p.data[:] = [3.0, 1.0, -1.0]
    p.grad = np.zeros(3)
    opt.step()  # p -= lr * mu * (p - anchor)
    np.testing.assert_allclose(p.data, [3.0 - 0.4, 1.0, -1.0 + 0.4])
