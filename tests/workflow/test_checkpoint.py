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
