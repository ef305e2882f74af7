"""State dicts saved without pickle: round trip, and refusal of pickled or broken files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import models
from engine import Tensor, no_grad
from engine.errors import MedgradError, SerializationError
from engine.serialize import load_state_dict, save_state_dict


def test_round_trip_gives_identical_outputs(tmp_path, rng):
    model = models.get("seed_cnn", rng=np.random.default_rng(1))
    path = tmp_path / "model.npz"
    save_state_dict(model.state_dict(), path)
    other = models.get("seed_cnn", rng=np.random.default_rng(2))
    other.load_state_dict(load_state_dict(path))
    x = Tensor(rng.standard_normal((4, 1, 28, 28)).astype(np.float32))
    with no_grad():
        np.testing.assert_array_equal(model(x).data, other(x).data)


def test_pickled_file_is_refused_without_executing(tmp_path):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.npz"
    np.savez(path, w=np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(SerializationError, match="evil.npz"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(MedgradError, match="raw.pkl"):
        load_state_dict(raw)


def test_truncated_and_missing_files_are_refused(tmp_path, rng):
    path = tmp_path / "m.npz"
    save_state_dict({"w": rng.standard_normal(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(SerializationError, match="m.npz"):
        load_state_dict(path)
    with pytest.raises(SerializationError, match="no such file"):
        load_state_dict(tmp_path / "absent.npz")


def test_object_arrays_are_not_saved(tmp_path):
    with pytest.raises(SerializationError, match="pickle"):
        save_state_dict({"w": np.array([{}], dtype=object)}, tmp_path / "x.npz")


def test_buffers_round_trip_with_their_dtypes(tmp_path):
    """Integer buffers (counters) come back as integers, float buffers as floats."""
    from engine import nn

    class Counter(nn.Module):
        def __init__(self):
            self.register_buffer("running_mean", np.arange(3, dtype=np.float32))
            self.register_buffer("num_batches_tracked", np.asarray(41, dtype=np.int64))

    path = tmp_path / "buffers.npz"
    save_state_dict(nn.Sequential(Counter()).state_dict(), path)
    loaded = load_state_dict(path)
    assert loaded["0.num_batches_tracked"].dtype == np.int64
    other = nn.Sequential(Counter())
    other[0].num_batches_tracked = np.asarray(0, dtype=np.int64)
    other[0].running_mean = np.zeros(3, dtype=np.float32)
    other.load_state_dict(loaded)
    assert other[0].num_batches_tracked == 41 and other[0].num_batches_tracked.dtype == np.int64
    np.testing.assert_array_equal(other[0].running_mean, np.arange(3))
