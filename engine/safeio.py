"""Reading `.npy` / `.npz` files safely: headers checked before any allocation, never unpickled.

Every reader of NumPy files in medgrad (model files, cache shards, MedMNIST archives) goes through
here, so one place enforces: no object dtypes (they need pickle), a size limit checked from the
header, and one project error naming the file for anything malformed.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from engine.errors import MedgradError, SerializationError

DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB per array unless the caller says otherwise


def _read_header(f, where: str, max_bytes: int, error: type[MedgradError]):
    """Parse a .npy header from file object f; return (shape, fortran_order, dtype)."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=10000)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=10000)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise error(f"{where}: not a valid .npy array ({exc})") from exc
    if dtype.hasobject:
        raise error(
            f"{where}: holds Python objects (dtype {dtype}), which would need pickle: refused"
        )
    if any(d < 0 for d in shape):
        raise error(f"{where}: negative dimension in shape {shape}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > max_bytes:
        raise error(
            f"{where}: header claims shape {shape} ({nbytes} bytes), over the limit of {max_bytes}"
        )
    return shape, fortran, dtype, nbytes


def load_npy(
    path: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    mmap: bool = False,
    error: type[MedgradError] = SerializationError,
) -> np.ndarray:
    """Load one `.npy` after checking its header (dtype, size); memory-mapped read-only with mmap."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            _, _, _, nbytes = _read_header(f, str(path), max_bytes, error)
            data_start = f.tell()
        if os.path.getsize(path) < data_start + nbytes:
            raise error(f"{path}: truncated (header needs {nbytes} bytes of data)")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as exc:
        raise error(f"{path}: no such file") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise error(f"{path}: unreadable .npy ({exc})") from exc


def load_npz(
    path: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = 10000,
    error: type[MedgradError] = SerializationError,
) -> dict[str, np.ndarray]:
    """Load every array of a `.npz`, each header checked before its data is read; max_bytes bounds
    the total. Anything pickled, truncated or not a zip raises `error` naming the file."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            if len(members) > max_members:
                raise error(f"{path}: {len(members)} members, over the limit of {max_members}")
            for info in members:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                where = f"{path}[{name}]"
                with zf.open(info) as f:
                    _, _, _, nbytes = _read_header(f, where, max_bytes - total, error)
                    header_bytes = f.tell()
                # numpy allocates before reading: a member shorter than its header claims is refused
                if info.file_size < header_bytes + nbytes:
                    raise error(f"{where}: truncated (header needs {nbytes} bytes of data)")
                total += nbytes
                with zf.open(info) as f:
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
    except FileNotFoundError as exc:
        raise error(f"{path}: no such file") from exc
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        OSError,
        EOFError,
        KeyError,
    ) as exc:
        raise error(f"{path}: not a readable pickle-free .npz ({exc})") from exc
    return out
