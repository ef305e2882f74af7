"""Federated training with Flower (flwr): each site trains on its own DICOM folder and sends back
only model parameters and a sample count; the server aggregates (FedAvg or FedProx) and writes
the global model as a normal medgrad model file. Optional client-side differential privacy.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.errors import ArgumentError, MedgradError


class FederatedError(MedgradError, RuntimeError):
    """Flower is missing, the server could not be reached, or a round failed."""


def _flwr():
    """flwr, imported lazily (it is an optional extra), without its own deprecation noise."""
    # Flower sends usage telemetry to its servers unless told not to: a hospital's training
    # process should contact nothing but the federation's own server (and offline it stalls)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import flwr
            import flwr.compat.client.app  # noqa: F401 - start_client lives here since 1.13
    except ImportError as exc:
        raise FederatedError(
            "federated training needs Flower: pip install 'medgrad[federated]'"
        ) from exc
    return flwr


@dataclass
class Plan:
    """What the server decides and sends to every site each round (Flower's fit config).

    Nothing here comes from a site. classes: the label names in index order, so every site maps
    its labels.csv onto the same indices. dp_clip > 0 turns on differential privacy: each
    site's update is clipped to L2 norm dp_clip and gets Gaussian noise of std dp_noise * dp_clip.
    """

    model: str = "seed_cnn"
    input_size: int = 28
    in_channels: int = 1
    classes: tuple[str, ...] = ("0", "1")
    epochs: int = 1  # local epochs per round
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 2e-3
    seed: int = 0
    proximal_mu: float = 0.0  # FedProx: local loss + mu/2 ||w - w_global||^2
    dp_clip: float = 0.0
    dp_noise: float = 0.0

    def to_config(self, server_round: int) -> dict:
        """Flower config: scalars only (classes as a JSON string)."""
        config = {k: v for k, v in asdict(self).items() if k != "classes"}
        return {**config, "classes": json.dumps(list(self.classes)), "round": server_round}

    @classmethod
    def from_config(cls, config: dict) -> Plan:
        fields = {k: config[k] for k in cls.__dataclass_fields__ if k in config and k != "classes"}
        return cls(**fields, classes=tuple(json.loads(config["classes"])))

    def build(self):
        """The model of this plan, initialised from `seed` (the same on the server and sites)."""
        import models

        return models.get(
            self.model,
            in_channels=self.in_channels,
            input_size=self.input_size,
            num_classes=len(self.classes),
            rng=np.random.default_rng(self.seed),
        )


def get_weights(model) -> list[np.ndarray]:
    """The model's state_dict arrays (parameters, then buffers) in state_dict order."""
    return [np.asarray(a) for a in model.state_dict().values()]


def set_weights(model, weights: list[np.ndarray]) -> None:
    names = list(model.state_dict())
    if len(names) != len(weights):
        raise FederatedError(f"got {len(weights)} arrays for a model with {len(names)}")
    model.load_state_dict(dict(zip(names, weights, strict=True)))


def dp_epsilon(noise: float, rounds: int, delta: float = 1e-5) -> float:
    """(epsilon, delta)-DP of `rounds` Gaussian-mechanism releases with noise multiplier `noise`
    (std / clip) for one site's updates: Renyi DP of order a is rounds * a / (2 noise^2),
    converted with epsilon = min_a RDP(a) + log(1/delta) / (a - 1) (Mironov 2017). No
    subsampling amplification is claimed. inf when noise is 0."""
    if noise <= 0:
        return math.inf
    orders = np.concatenate([np.linspace(1.01, 10, 200), np.arange(11, 512)])
    return float(np.min(rounds * orders / (2 * noise**2) + math.log(1 / delta) / (orders - 1)))


def privatize(update: list[np.ndarray], clip: float, noise: float, rng) -> list[np.ndarray]:
    """Clip the update (a list of arrays, one vector) to L2 norm `clip`, then add Gaussian noise
    N(0, (noise * clip)^2) to every entry; dtypes are kept."""
    norm = math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return [
        (u * scale + rng.normal(0.0, noise * clip, u.shape)).astype(u.dtype, copy=False)
        for u in update
    ]


class _Proximal:
    """FedProx: wraps an optimizer and adds mu (w - w_global) to each gradient before step."""

    def __init__(self, optimizer, mu: float):
        self.optimizer, self.mu = optimizer, mu
        self.anchor = [p.data.copy() for p in optimizer.params]

    def __getattr__(self, name):
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name, value):
        if name == "lr":
            self.optimizer.lr = value
        else:
            super().__setattr__(name, value)

    def zero_grad(self):
        self.optimizer.zero_grad()

    def step(self):
        for p, w0 in zip(self.optimizer.params, self.anchor, strict=True):
            if p.grad is not None:
                p.grad = p.grad + self.mu * (p.data - w0)  # d/dw mu/2 ||w - w0||^2
        self.optimizer.step()


class Site:
    """One hospital's side: its data stays here; train() returns what leaves the site.

    data_dir: a DICOM folder with labels.csv (anything engine.workflow.load_data reads). The
    data is loaded on the first round, prepared as the server's plan says.
    """

    def __init__(self, data_dir: str | Path, *, progress: bool = False, rng=None):
        self.data_dir, self.progress = str(data_dir), progress
        self.rng = rng if rng is not None else np.random.default_rng()  # DP noise: fresh entropy
        self._data = None

    def data(self, plan: Plan):
        if self._data is None:
            from engine.workflow import load_data

            ds = load_data(self.data_dir, input_size=plan.input_size, classes=list(plan.classes))
            self._data = (ds.images, ds.labels)
        return self._data

    def train(self, weights: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """(new weights, number of training images, {}) after plan.epochs local epochs from the
        global weights: exactly the arrays and the count Flower sends, nothing else."""
        from engine import optim
        from engine.train import fit

        plan = Plan.from_config(config)
        x, y = self.data(plan)
        model = plan.build()
        set_weights(model, weights)
        opt = optim.OPTIMIZERS[plan.optimizer](model.parameters(), lr=plan.lr)
        if plan.proximal_mu > 0:
            opt = _Proximal(opt, plan.proximal_mu)
        fit(
            model,
            opt,
            (x, y),
            epochs=plan.epochs,
            batch_size=plan.batch_size,
            seed=plan.seed + int(config.get("round", 0)),
            progress=self.progress,
        )
        new = get_weights(model)
        if plan.dp_clip > 0:
            update = [w1 - w0 for w1, w0 in zip(new, weights, strict=True)]
            noisy = privatize(update, plan.dp_clip, plan.dp_noise, self.rng)
            new = [w0 + u for w0, u in zip(weights, noisy, strict=True)]
        return new, int(len(y)), {}


def run_client(data_dir, server: str, *, timeout: float = 600.0, progress: bool = False) -> None:
    """Join the Flower server at HOST:PORT with this site's data until the server ends."""
    fl = _flwr()
    import grpc

    # the legacy client gives up at the first refused connection: wait until the server listens
    channel = grpc.insecure_channel(server)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError as exc:
        raise FederatedError(
            f"--server {server}: no Flower server answered in {timeout:g} s"
        ) from exc
    finally:
        channel.close()
    site = Site(data_dir, progress=progress)

    class MedgradClient(fl.client.NumPyClient):
        def fit(self, parameters, config):
            return site.train(list(parameters), config)

        def evaluate(self, parameters, config):  # the server asks for none (fraction 0)
            raise FederatedError("this client does not evaluate: its data stays on site")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fl.compat.client.app.start_client(
            server_address=server,
            client=MedgradClient().to_client(),
            insecure=True,
            max_wait_time=timeout,
        )


def serve(
    address: str,
    out_dir: str | Path,
    plan: Plan,
    *,
    rounds: int,
    min_clients: int,
    strategy: str = "fedavg",
    round_timeout: float | None = 600.0,
) -> Path:
    """Run the Flower server for `rounds` rounds with at least `min_clients` sites; after each
    round write out_dir/model.npz (the global model, a normal medgrad model file) and
    out_dir/federated.json (plan, rounds done, sites and images per round, DP epsilon)."""
    from engine.checkpoint import atomic_write, save_checkpoint

    if strategy not in ("fedavg", "fedprox"):
        raise ArgumentError(f"--strategy must be fedavg or fedprox, got {strategy!r}")
    if strategy == "fedprox" and plan.proximal_mu <= 0:
        raise ArgumentError("--strategy fedprox needs --proximal-mu > 0")
    fl = _flwr()
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = plan.build()
    log = {"plan": asdict(plan), "strategy": strategy, "rounds": []}
    base = fl.server.strategy.FedProx if strategy == "fedprox" else fl.server.strategy.FedAvg

    class SaveEachRound(base):
        def aggregate_fit(self, server_round, results, failures):
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is None:
                raise FederatedError(f"round {server_round}: no site returned an update")
            set_weights(model, parameters_to_ndarrays(params))
            epsilon = dp_epsilon(plan.dp_noise, server_round) if plan.dp_clip > 0 else None
            log["rounds"].append(
                {
                    "round": server_round,
                    "sites": len(results),
                    "images": [int(r.num_examples) for _, r in results],
                    "failures": len(failures),
                    "dp_epsilon": epsilon,
                }
            )
            preprocessing = {"input_size": plan.input_size, "in_channels": plan.in_channels}
            save_checkpoint(
                out_dir / "model.npz",
                model,
                classes=list(plan.classes),
                preprocessing=preprocessing,
                train_state={"round": server_round},
            )
            text = json.dumps(log, indent=1)
            atomic_write(out_dir / "federated.json", lambda f: f.write(text.encode()))
            eps = "" if epsilon is None else f"  DP epsilon {epsilon:.3g} (delta 1e-5)"
            print(f"round {server_round}/{rounds}: {len(results)} sites{eps}", flush=True)
            return params, metrics

    kwargs = {"proximal_mu": plan.proximal_mu} if strategy == "fedprox" else {}
    chosen = SaveEachRound(
        fraction_fit=1.0,
        fraction_evaluate=0.0,  # no evaluation round trip: sites send only their updates
        min_fit_clients=min_clients,
        min_evaluate_clients=0,
        min_available_clients=min_clients,
        on_fit_config_fn=plan.to_config,
        initial_parameters=ndarrays_to_parameters(get_weights(model)),
        accept_failures=False,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fl.server.start_server(
            server_address=address,
            config=fl.server.ServerConfig(num_rounds=rounds, round_timeout=round_timeout),
            strategy=chosen,
        )
    if len(log["rounds"]) < rounds:
        raise FederatedError(
            f"the federation stopped after {len(log['rounds'])} of {rounds} rounds"
        )
    return out_dir / "model.npz"
