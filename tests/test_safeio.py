"""engine.safeio against hostile NumPy files (RELIABILITY P7, P9): lying headers are refused
before any allocation, pickles are refused without running, every failure names the file."""

from __future__ import annotations

import io
import pickle
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DataError, SerializationError
from engine.safeio import load_npy, load_npz
from engine.serialize import load_state_dict


def _npy_bytes(shape, descr="<f8", data: bytes = b"\0" * 16) -> bytes:
    """A .npy whose header claims `shape` but which carries only `data`."""
    f = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)
    return f.getvalue() + data


def _peak_bytes(fn) -> int:
    """Peak traced allocation while fn runs (NumPy reports its data buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
    except (SerializationError, DataError):
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    "shape", [(10**15,), (10**8,), (2**31, 2**31)], ids=["1e15", "1e8", "2^62"]
)
def test_npy_lying_header_refused_before_allocation(tmp_path, shape):
    """1e15 elements is over any limit; 1e8 float64 (800 MB) is under the default limit but the
    file holds 16 bytes: both are refused from the header and the file size alone."""
    path = tmp_path / "lie.npy"
    path.write_bytes(_npy_bytes(shape))
    with pytest.raises(SerializationError, match=str(path.name)):
        load_npy(path)
    assert _peak_bytes(lambda: load_npy(path)) < 1 << 20


def test_npy_size_limit_is_the_callers(tmp_path):
    path = tmp_path / "ok.npy"
    np.save(path, np.zeros(1000))
    assert load_npy(path).shape == (1000,)
    with pytest.raises(DataError, match="over the limit"):
        load_npy(path, max_bytes=4000, error=DataError)


def test_npz_member_over_the_limit_refused_before_allocation(tmp_path):
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("weight.npy", _npy_bytes((10**15,)))
    with pytest.raises(SerializationError, match=r"lie\.npz\[weight\]"):
        load_npz(path)
    assert _peak_bytes(lambda: load_npz(path)) < 1 << 20


def test_npz_member_short_of_its_header_refused_before_allocation(tmp_path):
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("weight.npy", _npy_bytes((10**8,)))
    with pytest.raises(SerializationError, match="truncated"):
        load_npz(path)
    assert _peak_bytes(lambda: load_npz(path)) < 16 << 20


def test_object_npy_refused_without_running_the_payload(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(SerializationError, match="pickle"):
        load_npy(path)
    assert not marker.exists()


def test_pickled_npz_and_plain_pickle_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    npz = tmp_path / "model.npz"
    np.savez(npz, weight=np.ones(3), evil=np.array([_Payload(marker)], dtype=object))
    raw = tmp_path / "model.pkl.npz"
    raw.write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    for path in (npz, raw):
        with pytest.raises(SerializationError, match=path.name):
            load_state_dict(path)
        with pytest.raises(SerializationError):
            load_npz(path)
    assert not marker.exists()
    # The payload is real: unpickling it would have created the marker.
    pickle.loads(raw.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"PK\x03\x04 not really", b"\x93NUMPY garbage", b"x" * 100],
    ids=["empty", "bad-zip", "bad-npy", "text"],
)
def test_malformed_files_are_one_project_error(tmp_path, content):
    for suffix, loader in ((".npz", load_npz), (".npy", load_npy)):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(SerializationError, match=path.name):
            loader(path)


def test_truncated_npz_is_refused(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, a=np.arange(1000.0))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(SerializationError, match="t.npz"):
        load_npz(path)


def test_missing_file_named(tmp_path):
    with pytest.raises(SerializationError, match="no such file"):
        load_npz(tmp_path / "nope.npz")


def test_round_trip_of_plain_arrays(tmp_path):
    path = tmp_path / "ok.npz"
    arrays = {"w": np.arange(12.0).reshape(3, 4), "b": np.arange(3, dtype=np.int32)}
    np.savez(path, **arrays)
    out = load_npz(path)
    assert out.keys() == arrays.keys()
    for name, a in arrays.items():
        np.testing.assert_array_equal(out[name], a)
        assert out[name].dtype == a.dtype
