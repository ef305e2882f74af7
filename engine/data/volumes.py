"""Volumes in and out: NIfTI files (nibabel, read through a bounded stream) and DICOM series,
returned in one canonical orientation with their spacing and voxel-to-world affine.

Canonical orientation ("LPS", as SimpleITK's GetArrayFromImage gives for a DICOM axial series):
the array is (D, H, W); W runs towards the patient's Left, H towards Posterior, D towards
Superior. `meta["affine"]` maps an index (d, h, w, 1) to scanner world coordinates in mm in
NIfTI's RAS+ convention, so it can be written back unchanged with `write_volume`.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import numpy as np

from engine.errors import DataError

DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB of decompressed voxel data per file unless told otherwise
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# canonical world direction of each array axis (d, h, w) in RAS+ coordinates: +S, -A (= P), -R (= L)
_CANONICAL = ((2, +1.0), (1, -1.0), (0, -1.0))  # (world axis, sign) per array axis


def is_nifti(path: str | os.PathLike) -> bool:
    """True when the file name ends in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def case_name(path: str | os.PathLike) -> str:
    """The file or folder name without .nii/.nii.gz: 'lung_001.nii.gz' -> 'lung_001'."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ----------------------------------------------------------------------------- orientation


def canonicalize(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a volume to the canonical (D, H, W) = (S, P, L) layout -> (array, affine).

    array: (a0, a1, a2) or (C, a0, a1, a2); affine: 4x4, index (a0, a1, a2, 1) -> RAS+ mm.
    Each array axis goes to the world axis its direction points at most (greedy, largest
    component first, so an oblique affine maps to its closest canonical layout); only axis
    permutations and flips are used, so the voxel values (integer masks too) are kept exactly.
    """
    affine = np.asarray(affine, dtype=np.float64)
    lead = array.ndim - 3
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    world_of = [-1, -1, -1]
    free_axes, free_world = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):  # pick the strongest (array axis, world axis) pair still free
        a, w = max(
            ((a, w) for a in free_axes for w in free_world), key=lambda aw: abs(cols[aw[1], aw[0]])
        )
        world_of[a] = w
        free_axes.discard(a)
        free_world.discard(w)
    out_axes, new_affine = [], np.eye(4)
    origin = affine[:3, 3].copy()
    for target, (world, sign) in enumerate(_CANONICAL):
        a = world_of.index(world)
        col = affine[:3, a].copy()
        if np.sign(col[world]) != sign:  # flip: index i -> n-1-i moves the origin to the far end
            n = array.shape[lead + a]
            origin = origin + (n - 1) * col
            col = -col
            array = np.flip(array, axis=lead + a)
        out_axes.append(a)
        new_affine[:3, target] = col
    new_affine[:3, 3] = origin
    array = np.transpose(array, (*range(lead), *(lead + a for a in out_axes)))
    return np.ascontiguousarray(array), new_affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the lengths of the affine's first three columns."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


# ----------------------------------------------------------------------------- NIfTI reading


class _BoundedReader:
    """Read a .nii or .nii.gz through a size cap: read(n) returns at most n more bytes.

    A gzip stream is inflated in chunks with an output cap, so a gzip bomb never costs more
    memory than the caller asked for; the caller compares lengths with what the header promises.
    """

    def __init__(self, f):
        self.f = f
        self.gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gz else None

    def read(self, n: int) -> bytes:
        if not self.gz:
            return self.f.read(n)
        out = bytearray()
        while len(out) < n and not self.inflater.eof:
            chunk = self.inflater.unconsumed_tail or self.f.read(1 << 20)
            if not chunk:
                break
            out += self.inflater.decompress(chunk, n - len(out))
        return bytes(out)


def _header(path: Path, head: bytes):
    """Parse and sanity-check a NIfTI-1/2 header -> (header, expected total bytes)."""
    import nibabel as nib  # a declared dependency, imported only where NIfTI is read/written

    if len(head) < 348:
        raise DataError(f"{path}: broken NIfTI header (file has {len(head)} bytes, needs 348)")
    # strict where nibabel would "fix" and carry on: the size field and the magic must be right
    if int.from_bytes(head[:4], "little") == 348 or int.from_bytes(head[:4], "big") == 348:
        klass, magic = nib.Nifti1Header, head[344:348]
        ok = magic == b"n+1\0"  # single file (a .hdr/.img pair says ni1)
    elif int.from_bytes(head[:4], "little") == 540 or int.from_bytes(head[:4], "big") == 540:
        klass, magic = nib.Nifti2Header, head[4:8]
        ok = magic == b"n+2\0" and len(head) >= 540
    else:
        raise DataError(f"{path}: broken NIfTI header (sizeof_hdr is not 348 or 540)")
    if not ok:
        raise DataError(
            f"{path}: broken NIfTI header (magic {bytes(magic)!r}, want single-file n+1/n+2)"
        )
    try:
        hdr = klass.from_fileobj(io.BytesIO(head), check=False)
    except Exception as exc:  # nibabel raises several types for a bad header
        raise DataError(f"{path}: broken NIfTI header ({exc})") from exc
    dims = np.asarray(hdr["dim"], dtype=np.int64)
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or (dims[1 : ndim + 1] < 1).any():
        raise DataError(f"{path}: broken NIfTI header (dim = {dims.tolist()})")
    try:
        itemsize = hdr.get_data_dtype().itemsize
    except Exception as exc:
        raise DataError(f"{path}: broken NIfTI header (datatype: {exc})") from exc
    nbytes = int(np.prod(dims[1 : ndim + 1], dtype=object)) * itemsize
    if int(hdr["vox_offset"]) < int(hdr["sizeof_hdr"]):
        raise DataError(f"{path}: broken NIfTI header (vox_offset {hdr['vox_offset']} inside it)")
    return hdr, int(hdr["vox_offset"]) + nbytes


def _load_nifti(path: Path, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (raw array as stored (i, j, k[, c]), affine ijk -> RAS+), every check done first."""
    import nibabel as nib

    try:
        with open(path, "rb") as f:
            reader = _BoundedReader(f)
            data = reader.read(540)  # room for a NIfTI-2 header
            hdr, expected = _header(path, data)
            if expected > max_bytes:
                raise DataError(
                    f"{path}: header promises {expected} bytes of data, over the limit of {max_bytes}"
                )
            data += reader.read(max(expected - len(data), 0))
            # bytes past the header's end: a little trailing padding is tolerated
            extra = len(data) - expected + len(reader.read(1 << 16))
    except zlib.error as exc:
        raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(data) < expected:
        raise DataError(f"{path}: truncated: {len(data)} bytes, the header needs {expected}")
    if extra >= 1 << 16:  # more than 64 KiB past the end
        raise DataError(
            f"{path}: holds more than the {expected} bytes its header describes "
            "(a corrupt file or a gzip bomb): refused"
        )
    try:
        klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = klass.from_bytes(data[:expected])
        array = np.asanyarray(img.dataobj)
        affine = img.affine
    except Exception as exc:
        raise DataError(f"{path}: unreadable NIfTI ({exc})") from exc
    if (
        affine is None
        or not np.isfinite(affine).all()
        or abs(np.linalg.det(affine[:3, :3])) < 1e-12
    ):
        raise DataError(f"{path}: broken NIfTI header (no usable voxel-to-world affine)")
    return np.asarray(array), np.asarray(affine, dtype=np.float64)


def _to_volume(path, array: np.ndarray) -> np.ndarray:
    """Stored NIfTI array -> (i, j, k) or channels first (C, i, j, k); 2-D or > 4-D refused."""
    while array.ndim > 3 and array.shape[-1] == 1:  # trailing singleton time/vector axes
        array = array[..., 0]
    if array.ndim == 4 and array.shape[3] > 1:
        return np.moveaxis(array, 3, 0)
    if array.ndim != 3:
        raise DataError(
            f"{path}: shape {array.shape} is not a volume; expected 3-D (x, y, z) or 4-D with "
            "channels last"
        )
    return array


# ----------------------------------------------------------------------------- DICOM series


def _dicom_series(folder: Path, **kw) -> tuple[np.ndarray, np.ndarray]:
    """-> (volume (k, r, c) in modality units, affine (k, r, c) -> RAS+) from a series folder."""
    from engine.data.dicom import read_series

    volume, (dz, dy, dx), metas = read_series(folder, **kw)
    iop = np.asarray(metas[0]["image_orientation"], dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]  # LPS directions of increasing column, increasing row
    origin = np.asarray(metas[0]["image_position"], dtype=np.float64)
    if len(metas) > 1:  # slices are sorted along the normal; step from first to last
        step = (np.asarray(metas[-1]["image_position"]) - origin) / (len(metas) - 1)
    else:
        step = np.cross(row_dir, col_dir) * dz
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = step, col_dir * dy, row_dir * dx, origin
    return volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS world -> RAS world


# ----------------------------------------------------------------------------- public API


def read_volume(
    path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, dict]:
    """Read a NIfTI file or a DICOM series folder -> (volume float32, meta).

    volume: (D, H, W), or (C, D, H, W) for a 4-D NIfTI (channels last on disk), in the
    canonical orientation (module docstring). meta: "spacing" (mm per array axis, (d, h, w)),
    "affine" (4x4 float64, index (d, h, w, 1) -> RAS+ mm), "path", "format" ("nifti" | "dicom").
    A 2-D file, more than 4 dimensions, a broken header, a truncated file or a gzip stream that
    inflates past the header's size (or `max_bytes`) raise DataError naming the file.
    """
    array, meta = _read(path, max_bytes)
    if not np.isfinite(array).all():
        raise DataError(f"{path}: voxel values are not finite (NaN or inf)")
    return array.astype(np.float32, copy=False), meta


def read_mask(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, dict]:
    """Read an integer label volume -> (mask int64 (D, H, W), meta) in the canonical orientation.

    Values must be whole numbers >= 0 (and < num_classes when given), else DataError naming the
    file and the offending values. Reorientation is a pure permutation/flip, so labels are exact.
    """
    array, meta = _read(path, max_bytes)
    if array.ndim != 3:
        raise DataError(f"{path}: a mask must be one 3-D volume, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise DataError(f"{path}: mask values are not whole numbers")
    mask = array.astype(np.int64)
    values = np.unique(mask)
    bad = values[(values < 0) | (values >= (num_classes or np.iinfo(np.int64).max))]
    if len(bad):
        raise DataError(
            f"{path}: label values {bad[:10].tolist()} outside the classes 0..{(num_classes or 1) - 1}"
        )
    return mask, meta


def _read(path, max_bytes: int) -> tuple[np.ndarray, dict]:
    path = Path(path)
    if path.is_dir():
        array, affine = _dicom_series(path)
        fmt = "dicom"
    elif is_nifti(path):
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        raw, affine = _load_nifti(path, max_bytes)
        array = _to_volume(path, raw)
        fmt = "nifti"
    else:
        raise DataError(f"{path}: not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
    if array.shape[-3:].count(1) > 0 and min(array.shape[-3:]) == 1:
        raise DataError(f"{path}: shape {array.shape} is a single slice, a volume is expected")
    array, affine = canonicalize(array, affine)
    meta = {"path": str(path), "format": fmt, "affine": affine, "spacing": spacing_of(affine)}
    return array, meta


def check_aligned(image_meta: dict, mask_meta: dict, image_shape, mask_shape) -> None:
    """Raise DataError naming both files when an image and its mask differ in (D, H, W) shape,
    spacing (> 1e-3 relative) or affine (> 1e-3 mm)."""
    a, b = image_meta.get("path"), mask_meta.get("path")
    if tuple(image_shape[-3:]) != tuple(mask_shape[-3:]):
        why = f"shape {tuple(image_shape[-3:])} vs {tuple(mask_shape[-3:])}"
    elif not np.allclose(image_meta["spacing"], mask_meta["spacing"], rtol=1e-3, atol=0):
        why = f"spacing {image_meta['spacing']} vs {mask_meta['spacing']}"
    elif not np.allclose(image_meta["affine"], mask_meta["affine"], rtol=0, atol=1e-3):
        why = f"affine\n{np.round(image_meta['affine'], 4)}\nvs\n{np.round(mask_meta['affine'], 4)}"
    else:
        return
    raise DataError(f"image {a} and mask {b} do not line up: {why}")


def read_pair(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read an image and its mask -> (image float32 (D,H,W)|(C,D,H,W), mask int64 (D,H,W), meta).

    Both are canonicalised; their shape, spacing and affine must agree (check_aligned), else
    DataError naming both files. meta is the image's, with "mask_path" added.
    """
    image, meta = read_volume(image_path, max_bytes=max_bytes)
    mask, mask_meta = read_mask(mask_path, num_classes=num_classes, max_bytes=max_bytes)
    check_aligned(meta, mask_meta, image.shape, mask.shape)
    return image, mask, {**meta, "mask_path": str(mask_path)}


# ----------------------------------------------------------------------------- writing


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, dtype) -> bytes:
    """Canonical (D, H, W) or (C, D, H, W) array -> NIfTI-1 bytes stored (x, y, z[, c])."""
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise DataError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    lead = array.ndim - 3
    stored = np.transpose(array, (*range(lead + 2, lead - 1, -1), *range(lead)))  # (w, h, d, c)
    ijk = affine[:, [2, 1, 0, 3]]  # columns follow the stored axis order
    img = nib.Nifti1Image(np.asarray(stored, dtype=dtype), ijk)
    img.header.set_xyzt_units("mm")
    img.set_qform(ijk, code=1)
    img.set_sform(ijk, code=1)
    return img.to_bytes()


def write_volume(
    path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, dtype=np.float32
) -> Path:
    """Write a canonical (D, H, W) or (C, D, H, W) array with its affine (index (d, h, w, 1) ->
    RAS+ mm, as read_volume returns) as NIfTI (.nii, or gzip for .nii.gz) -> path.

    The file is written atomically (temporary file, then rename): no half-written volume is left
    if anything fails. Reading it back with read_volume returns the same array and affine.
    """
    from engine.checkpoint import atomic_write

    path = Path(path)
    if not is_nifti(path):
        raise DataError(f"{path}: write_volume writes .nii or .nii.gz files")
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise DataError(f"{path}: expected a (D, H, W) or (C, D, H, W) array, got {array.shape}")
    blob = _nifti_bytes(array, affine, dtype)
    if path.name.lower().endswith(".gz"):
        blob = gzip.compress(blob, compresslevel=6, mtime=0)  # mtime 0: byte-identical reruns
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: f.write(blob))


def write_mask(path: str | os.PathLike, mask: np.ndarray, affine: np.ndarray) -> Path:
    """Write an integer (D, H, W) label volume as uint8 (or int16 past 255) NIfTI, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 3 or not (
        np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.bool_)
    ):
        raise DataError(
            f"{path}: expected an integer (D, H, W) mask, got {mask.dtype} {mask.shape}"
        )
    if mask.size and (mask.min() < 0 or mask.max() > 32767):
        raise DataError(f"{path}: mask values must be in 0..32767")
    dtype = np.uint8 if not mask.size or mask.max() <= 255 else np.int16
    return write_volume(path, mask, affine, dtype=dtype)


# ----------------------------------------------------------------------------- back to a file's grid


def file_orientation(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """How canonicalize(array, affine) reorders a file's array -> (axes, flipped).

    axes[t]: the file's array axis that becomes canonical axis t; flipped[t]: whether it was
    reversed. Found by canonicalizing a 2x2x2 probe whose voxels number their own index, so it
    is exactly canonicalize's choice (oblique affines included), with no second copy of its rule.
    """
    probe = np.arange(8, dtype=np.int64).reshape(2, 2, 2)  # value 4 i + 2 j + k at (i, j, k)
    moved, _ = canonicalize(probe, affine)
    axes, flipped = [], []
    for t in range(3):
        unit = [0, 0, 0]
        unit[t] = 1
        step = int(moved[tuple(unit)] - moved[0, 0, 0])  # +-4, +-2 or +-1: which axis, which way
        axes.append({4: 0, 2: 1, 1: 2}[abs(step)])
        flipped.append(step < 0)
    return tuple(axes), tuple(flipped)


def to_file_grid(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo canonicalize: a canonical (D, H, W) array -> the file's own (i, j, k) voxel grid,
    `affine` being the FILE's affine (index (i, j, k, 1) -> RAS+). A permutation and flips only,
    so labels are kept exactly; to_file_grid(canonicalize(x, A)[0], A) == x."""
    axes, flipped = file_orientation(affine)
    out = np.transpose(array, np.argsort(axes))  # canonical axis t goes back to file axis axes[t]
    for t, flip in enumerate(flipped):
        if flip:
            out = np.flip(out, axis=axes[t])
    return np.ascontiguousarray(out)


def _nifti_header(path: Path, max_bytes: int):
    """The checked header of a NIfTI file (engine's bounded reader; no voxel data decoded)."""
    try:
        with open(path, "rb") as f:
            head = _BoundedReader(f).read(540)
    except zlib.error as exc:
        raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    hdr, expected = _header(path, head)
    if expected > max_bytes:
        raise DataError(f"{path}: header promises {expected} bytes, over the limit of {max_bytes}")
    return hdr


def write_mask_like(
    path: str | os.PathLike,
    mask: np.ndarray,
    reference: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Write a canonical (D, H, W) integer mask in the voxel grid of the volume it was predicted
    from, atomically, as NIfTI (.nii or .nii.gz) -> path.

    reference: the input as read_volume read it. A NIfTI file: the mask is put back into the
    file's own (i, j, k) order (to_file_grid) and written with a copy of its header, so qform,
    sform and their codes, hence the affine nibabel (ITK-SNAP, 3D Slicer) derives, are the
    input's exactly; the data type becomes uint8 (int16 past 255), without scaling. A DICOM
    series folder: written canonical with the series' affine (write_mask).
    """
    import nibabel as nib

    from engine.checkpoint import atomic_write

    path, reference = Path(path), Path(reference)
    mask = np.asarray(mask)
    if not is_nifti(path):
        raise DataError(f"{path}: write_mask_like writes .nii or .nii.gz files")
    if mask.ndim != 3 or not np.issubdtype(mask.dtype, np.integer):
        raise DataError(
            f"{path}: expected an integer (D, H, W) mask, got {mask.dtype} {mask.shape}"
        )
    if mask.size and (mask.min() < 0 or mask.max() > 32767):
        raise DataError(f"{path}: mask values must be in 0..32767")
    if reference.is_dir():
        _, meta = _read(reference, max_bytes)
        return write_mask(path, mask, meta["affine"])
    if not is_nifti(reference):
        raise DataError(f"{reference}: not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
    hdr = _nifti_header(reference, max_bytes)
    affine = hdr.get_best_affine()
    stored = to_file_grid(mask, affine)
    shape = tuple(int(n) for n in hdr.get_data_shape()[:3])
    if stored.shape != shape:
        raise DataError(
            f"{path}: mask of shape {mask.shape} does not fit {reference} (voxel grid {shape})"
        )
    dtype = np.uint8 if not mask.size or mask.max() <= 255 else np.int16
    header = hdr.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)  # labels as stored, whatever the image's scaling was
    header["cal_min"], header["cal_max"] = 0, 0
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(stored.astype(dtype), None, header=header)
    # nibabel rebuilds the header from the image: put the reference's orientation back exactly
    img.set_qform(hdr.get_qform(), code=int(hdr["qform_code"]))
    img.set_sform(hdr.get_sform(), code=int(hdr["sform_code"]))
    blob = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        blob = gzip.compress(blob, compresslevel=6, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: f.write(blob))
