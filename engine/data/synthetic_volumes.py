"""Deterministic synthetic chest-CT volumes with nodule label masks, written as NIfTI (the MSD
layout: imagesTr/, labelsTr/, dataset.json) and as DICOM series, with anisotropic spacing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from engine.data.volumes import write_mask, write_volume

FOV_MM = 320.0  # in-plane field of view: dx = dy = FOV_MM / size
SLICE_FACTOR = 2.0  # slices are this many times thicker than pixels (anisotropic)


def case_geometry(size: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """-> (shape (D, H, W), spacing mm (d, h, w)) of a demo volume of in-plane size `size`."""
    dx = FOV_MM / size
    return (max(size // 2, 8), size, size), (dx * SLICE_FACTOR, dx, dx)


def affine_for(shape, spacing) -> np.ndarray:
    """The canonical affine of an axial volume centred on the world origin (RAS+ mm)."""
    d, h, w = shape
    sd, sh, sw = spacing
    affine = np.diag([-sw, -sh, sd, 1.0])[:, [2, 1, 0, 3]]  # columns (d, h, w): +S, -A, -R
    affine[:3, 3] = [sw * (w - 1) / 2, sh * (h - 1) / 2, -sd * (d - 1) / 2]
    return affine


def synthetic_ct(
    rng: np.random.Generator, size: int, *, lungs_class: bool = False, n_nodules: int = 3
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One case -> (hu float32 (D, H, W) whole numbers, mask uint8 (D, H, W), spacing (d, h, w)).

    Body ellipsoid (soft tissue ~40 HU), two lung ellipsoids (~-850 HU), n_nodules spheres or
    ellipsoids inside the lungs with radius 12-30 mm and density -300..+100 HU, air -1000 HU
    outside, Gaussian noise (sd 15 HU). mask: 1 nodule, 0 else (2 = lung when lungs_class).
    """
    shape, spacing = case_geometry(size)
    zz, yy, xx = (np.arange(n, dtype=np.float64)[:, None, None] for n in shape)
    yy, xx = yy.reshape(1, -1, 1), xx.reshape(1, 1, -1)
    zmm, ymm, xmm = (
        (zz - (shape[0] - 1) / 2) * spacing[0],
        (yy - (shape[1] - 1) / 2) * spacing[1],
        (xx - (shape[2] - 1) / 2) * spacing[2],
    )

    def ellipsoid(c, r):  # inside test in mm around centre c with radii r (z, y, x)
        return ((zmm - c[0]) / r[0]) ** 2 + ((ymm - c[1]) / r[1]) ** 2 + (
            (xmm - c[2]) / r[2]
        ) ** 2 <= 1

    body_r = (FOV_MM, FOV_MM * rng.uniform(0.30, 0.36), FOV_MM * rng.uniform(0.42, 0.47))
    hu = np.full(shape, -1000.0)
    hu[ellipsoid((0, 0, 0), body_r)] = 40.0
    lungs = np.zeros(shape, dtype=bool)
    lung_r = (shape[0] * spacing[0] * 0.55, body_r[1] * 0.7, body_r[2] * 0.38)
    for side in (-1, 1):
        lungs |= ellipsoid((0, -body_r[1] * 0.05, side * body_r[2] * 0.48), lung_r)
    hu[lungs] = -850.0
    mask = np.zeros(shape, dtype=np.uint8)
    if lungs_class:
        mask[lungs] = 2
    for _ in range(n_nodules):
        side = rng.choice([-1, 1])
        radius = rng.uniform(12.0, 30.0)
        stretch = rng.uniform(0.75, 1.3, size=3)  # spheres and ellipsoids
        centre = (
            rng.uniform(-0.4, 0.4) * lung_r[0],
            -body_r[1] * 0.05 + rng.uniform(-0.4, 0.4) * lung_r[1],
            side * body_r[2] * 0.48 + rng.uniform(-0.35, 0.35) * lung_r[2],
        )
        nodule = ellipsoid(centre, radius * stretch) & lungs
        hu[nodule] = rng.uniform(-300.0, 100.0)
        mask[nodule] = 1
    hu = np.round(hu + rng.normal(0.0, 15.0, shape)).clip(-1024, 3071)
    return hu.astype(np.float32), mask, spacing


def _write_dicom_series(folder: Path, hu: np.ndarray, affine: np.ndarray, case: str, seed: int):
    """Axial CT slices (16-bit signed, intercept -1024) under folder/, file names shuffled."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    def uid(tag: str) -> str:
        return generate_uid(entropy_srcs=["medgrad-seg-demo", str(seed), case, tag])

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # RAS world -> DICOM LPS world
    dz, dy, dx = (float(np.linalg.norm(affine[:3, i])) for i in range(3))
    names = np.random.default_rng([seed, 7]).permutation(len(hu))
    for k, plane in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uid(f"{k}")
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(folder), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid(f"{k}")
        ds.Modality, ds.PatientID, ds.PatientName = "CT", case, case
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
        ds.FrameOfReferenceUID, ds.InstanceNumber = uid("frame"), str(k + 1)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in lps[:3, 3] + k * lps[:3, 0]]
        ds.ImageOrientationPatient = [
            *(f"{v:g}" for v in lps[:3, 2] / dx),
            *(f"{v:g}" for v in lps[:3, 1] / dy),
        ]
        ds.PixelSpacing, ds.SliceThickness = [f"{dy:.6f}", f"{dx:.6f}"], f"{dz:.6f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = (plane + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{int(names[k]):05d}.dcm", enforce_file_format=True)


def make_segmentation_demo_data(
    out_dir: str | os.PathLike,
    n_cases: int = 8,
    size: int = 64,
    seed: int = 0,
    *,
    lungs_class: bool = False,
    dicom: bool = True,
) -> Path:
    """Write n_cases synthetic CT volumes and masks -> out_dir (as a Path).

    Layout (Medical Segmentation Decathlon): imagesTr/case_NNN.nii.gz, labelsTr/case_NNN.nii.gz,
    dataset.json (training pairs, labels {0: background, 1: nodule[, 2: lung]}, patient ids) and,
    with dicom=True, dicom/case_NNN/ holding the same image as an axial DICOM series. Volumes
    are (size // 2, size, size) with spacing (2 dx, dx, dx), dx = 320 mm / size. Deterministic:
    the same arguments give the same voxels.
    """
    if n_cases < 1 or size < 16:
        raise ValueError(f"need n_cases >= 1 and size >= 16, got {n_cases}, {size}")
    out = Path(out_dir)
    training = []
    for i in range(n_cases):
        case = f"case_{i:03d}"
        rng = np.random.default_rng([seed, i])
        hu, mask, spacing = synthetic_ct(
            rng, size, lungs_class=lungs_class, n_nodules=int(rng.integers(2, 5))
        )
        affine = affine_for(hu.shape, spacing)
        write_volume(out / "imagesTr" / f"{case}.nii.gz", hu, affine, dtype=np.int16)
        write_mask(out / "labelsTr" / f"{case}.nii.gz", mask, affine)
        if dicom:
            _write_dicom_series(out / "dicom" / case, hu, affine, case, seed)
        training.append(
            {
                "image": f"./imagesTr/{case}.nii.gz",
                "label": f"./labelsTr/{case}.nii.gz",
                "patient_id": case,
            }
        )
    labels = {"0": "background", "1": "nodule", **({"2": "lung"} if lungs_class else {})}
    desc = {
        "name": "medgrad synthetic chest CT",
        "description": f"{n_cases} synthetic CT volumes with lung nodules (seed {seed})",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": n_cases,
        "training": training,
        "test": [],
    }
    (out / "dataset.json").write_text(json.dumps(desc, indent=2))
    return out
