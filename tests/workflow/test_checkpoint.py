"""Model files: round trip, atomic save under SIGKILL, and refusal of pickled, tampered, truncated files."""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import models
from engine import nn, optim
from engine.checkpoint import (
    atomic_write,
    build_model,
    build_optimizer,
    load_checkpoint,
    load_model,
    remove_stale_temporaries,
    save_checkpoint,
)
from engine.errors import SerializationError
from engine.tensor import Tensor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def saved(tmp_path):
    model = models.get("lenet5", num_classes=3, rng=np.random.default_rng(0))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    model(Tensor(x)).sum().backward()
    opt.step()  # so the Adam moments exist
    path = save_checkpoint(
        tmp_path / "model.npz",
        model,
        optimizer=opt,
        classes=["a", "b", "c"],
        preprocessing={"input_size": 28},
        train_state={"epoch": 3},
    )
    return path, model, opt, x


def test_round_trip_holds_everything(saved):
    path, model, opt, x = saved
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == {"name": "lenet5", "num_classes": 3}
    assert ckpt.preprocessing == {"input_size": 28} and ckpt.classes == ["a", "b", "c"]
    assert ckpt.train_state == {"epoch": 3}
    rebuilt, _ = load_model(path)
    np.testing.assert_array_equal(rebuilt(Tensor(x)).data, model.eval()(Tensor(x)).data)
    opt2 = build_optimizer(ckpt, build_model(ckpt).parameters())
    assert opt2.steps == 1 and opt2.betas == opt.betas
    for a, b in zip(opt.m, opt2.m, strict=True):
        np.testing.assert_array_equal(a, b)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_bit_flips_are_refused_or_harmless(saved):
    """P10: a flipped bit in the arrays or the JSON is refused; a flip in a zip field that holds no
    content (a timestamp, say) may load, but then with exactly the original contents."""
    path, model, *_ = saved
    good = path.read_bytes()
    refused = 0
    for offset in range(0, len(good), max(1, len(good) // 120)):
        path.write_bytes(good)
        _flip_byte(path, offset)
        try:
            ckpt = load_checkpoint(path)
        except SerializationError as exc:
            assert path.name in str(exc)
            refused += 1
            continue
        for name, a in model.state_dict().items():
            np.testing.assert_array_equal(ckpt.weights[name], a)
    assert refused >= 0.9 * len(range(0, len(good), max(1, len(good) // 120)))


def _rewrite_member(path: Path, member: str, change) -> None:
    """Replace one array inside the zip with change(array): a valid zip, a forged content."""
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    arr = np.load(io.BytesIO(members[member]), allow_pickle=False)
    buf = io.BytesIO()
    np.save(buf, change(arr))
    members[member] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_edited_weight_or_metadata_fails_the_sha256(saved):
    path, *_ = saved
    good = path.read_bytes()
    _rewrite_member(path, "weights/0.weight.npy", lambda a: a + np.float32(1e-3))
    with pytest.raises(SerializationError, match="SHA-256"):
        load_checkpoint(path)
    path.write_bytes(good)
    meta = lambda a: np.frombuffer(a.tobytes().replace(b'"lenet5"', b'"mlp\x20\x20\x20"'), np.uint8)  # noqa: E731
    _rewrite_member(path, "meta.json.npy", meta)
    with pytest.raises(SerializationError, match="SHA-256"):
        load_checkpoint(path)


def test_truncated_and_empty_files_are_refused(saved):
    path, *_ = saved
    good = path.read_bytes()
    for size in (0, 10, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:size])
        with pytest.raises(SerializationError, match=path.name):
            load_checkpoint(path)
    with pytest.raises(SerializationError, match="no such file"):
        load_checkpoint(path.parent / "missing.npz")


class _Payload:
    """Unpickling this would create the marker file: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_files_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    plain = tmp_path / "model.npz"
    plain.write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    with pytest.raises(SerializationError, match="model.npz"):
        load_checkpoint(plain)
    inside = tmp_path / "object.npz"  # a real npz whose member is a pickled object array
    np.savez(inside, **{"meta.json": np.array([_Payload(marker)], dtype=object)})
    with pytest.raises(SerializationError, match="object.npz"):
        load_checkpoint(inside)
    assert not marker.exists()


def test_foreign_npz_is_refused(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.zeros(3))
    with pytest.raises(SerializationError, match="not a medgrad model file"):
        load_checkpoint(path)


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(SerializationError, match="f.bin"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from engine import nn
    from engine.checkpoint import save_checkpoint
    model = nn.Linear(1000, 1000, rng=np.random.default_rng(0))  # 4 MB of weights per save
    version = 0
    while True:
        model.weight.data[...] = version  # every weight of one file holds the same number
        save_checkpoint(sys.argv[1], model, train_state={"version": version})
        if version == 0:
            print("ready", flush=True)
        version += 1
    """
)


def test_sigkill_during_save_leaves_old_or_new_checkpoint(tmp_path):
    """F1: kill a process that saves in a loop at different moments; the file always loads whole."""
    path = tmp_path / "checkpoint.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    versions = []
    for delay in (0.0, 0.01, 0.03, 0.05, 0.08, 0.13, 0.21, 0.34):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        ckpt = load_checkpoint(path)  # never a broken file
        version = ckpt.train_state["version"]
        assert np.all(ckpt.weights["weight"] == version)  # and never a mix of two versions
        versions.append(version)
        remove_stale_temporaries(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
    assert len(set(versions)) > 1  # the kills did land during different saves


def test_non_sequential_model_has_no_layer_list(tmp_path):
    class Custom(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2, rng=np.random.default_rng(0))

        def forward(self, x):
            return self.fc(x)

    ckpt = load_checkpoint(save_checkpoint(tmp_path / "c.npz", Custom()))
    assert ckpt.spec is None and ckpt.model_config is None
    with pytest.raises(SerializationError, match="no model name and no layer spec"):
        build_model(ckpt)


def _layer_list_v1(model) -> list[dict]:
    """The version-1 writer's flat layer list (engine.checkpoint.layer_spec before version 2)."""
    from engine.ops import pair

    spec = []
    for i, layer in enumerate(model.layers):
        entry: dict = {"type": type(layer).__name__}
        if isinstance(layer, nn.Conv2d):
            entry.update(stride=list(layer.stride), padding=list(layer.padding))
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            entry.update(weight=f"{i}.weight", bias=f"{i}.bias" if layer.bias is not None else None)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            k = pair(layer.kernel_size)
            entry.update(
                kernel_size=list(k),
                stride=list(pair(layer.stride or k)),
                padding=list(pair(layer.padding)),
            )
        spec.append(entry)
    return spec


def _save_v1(path: Path, model, config) -> Path:
    """A version-1 model file, written as the version-1 save_checkpoint wrote it."""
    import json

    from engine.checkpoint import _digest

    arrays = {f"weights/{k}": v for k, v in model.state_dict().items()}
    meta = {
        "format": "medgrad-model",
        "version": 1,
        "engine_version": "0.1.0",
        "model": config,
        "layers": _layer_list_v1(model),
        "preprocessing": {"input_size": 28},
        "classes": None,
        "optimizer": None,
        "train_state": {},
        "arrays": {name: [a.dtype.str, list(a.shape)] for name, a in arrays.items()},
    }
    meta_bytes = json.dumps(meta, sort_keys=True, allow_nan=False).encode()
    payload = {
        "meta.json": np.frombuffer(meta_bytes, dtype=np.uint8),
        **arrays,
        "sha256": np.frombuffer(_digest(meta_bytes, arrays).encode(), dtype=np.uint8),
    }
    np.savez(path, **payload)
    return path


# the models of version-1 days: a v1 file holds a flat layer list, never a nested one (ResNet)
@pytest.mark.parametrize("name", ["lenet5", "mlp", "seed_cnn"])
def test_version_1_files_still_load(tmp_path, name):
    """A v1 file (flat layer list) loads: its list becomes the model's spec, the registry model
    and the spec-built model compute what the saved one did, and NumPy-only inference runs it."""
    from engine import deploy

    model = models.get(name, num_classes=3, rng=np.random.default_rng(0)).eval()
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    expected = model(Tensor(x)).data
    path = _save_v1(tmp_path / "old.npz", model, model.config)
    ckpt = load_checkpoint(path)
    assert ckpt.spec == model.spec() and ckpt.preprocessing == {"input_size": 28}
    rebuilt, _ = load_model(path)
    np.testing.assert_array_equal(rebuilt(Tensor(x)).data, expected)
    anonymous = _save_v1(tmp_path / "anonymous.npz", model, None)  # no registry name: the spec
    np.testing.assert_array_equal(load_model(anonymous)[0](Tensor(x)).data, expected)
    np.testing.assert_allclose(deploy.load(path)(x), expected, rtol=1e-5, atol=1e-6)


def test_version_1_file_with_a_broken_layer_list_is_refused(tmp_path):
    model = models.get("mlp", hidden=4, num_classes=2, rng=np.random.default_rng(0))
    model.layers[1].weight.data = model.layers[1].weight.data[None]  # a 3-D "Linear" weight
    with pytest.raises(SerializationError, match="broken.npz: version-1 layer list"):
        load_checkpoint(_save_v1(tmp_path / "broken.npz", model, None))


def test_model_file_stores_the_spec_and_rebuilds_without_a_registry_name(tmp_path, rng):
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1, rng=rng), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2)
    )
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "seq.npz", model))
    assert ckpt.model_config is None and ckpt.spec == model.spec()
    x = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(build_model(ckpt)(Tensor(x)).data, model(Tensor(x)).data)
