"""A deterministic synthetic chest-CT study set written as real DICOM files (CT Image Storage).

Each fake patient gets one axial series: body, fat, muscle, lungs, heart, spine, table and lung
vessels in Hounsfield units with noise; some slices cross a lung nodule (3-D sphere of varying
size, density and position), which is the slice's label. Headers carry fake identities (names,
ids, dates, institution, a private block) so de-identification has something to remove.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

FOV_MM = 340.0  # reconstruction field of view: pixel spacing = FOV_MM / size
SLICE_MM = 5.0  # slice thickness and spacing
MIN_VISIBLE = 0.8  # a nodule is drawn (and labels the slice) where its cut is >= 0.8 R

_FIRST = [
    "JANE",
    "JOHN",
    "MARIA",
    "AHMED",
    "WEI",
    "OLGA",
    "PEDRO",
    "AIKO",
    "FATIMA",
    "LUCAS",
    "EMMA",
    "NOAH",
    "ZOE",
    "IVAN",
    "SARA",
    "KOFI",
]
_LAST = [
    "DOE",
    "SMITH",
    "GARCIA",
    "KHAN",
    "CHEN",
    "IVANOVA",
    "SILVA",
    "TANAKA",
    "OKAFOR",
    "MULLER",
    "ROSSI",
    "NOVAK",
    "DUBOIS",
    "NIELSEN",
    "COHEN",
    "MENSAH",
]
_INSTITUTIONS = [
    ("Springfield General Hospital", "742 Evergreen Terrace, Springfield"),
    ("St. Example University Medical Center", "1 Sample Road, Exampletown"),
]

# Stored-value encodings, cycled over patients so readers meet all of them:
# (BitsStored, PixelRepresentation, RescaleSlope, RescaleIntercept)
_ENCODINGS = [(12, 0, 1.0, -1024.0), (16, 1, 1.0, 0.0), (16, 0, 0.5, -1024.0)]


def _ellipse(yy, xx, cy, cx, ry, rx, soft: float = 1.5):
    """A soft-edged ellipse mask in [0, 1] (edge width ~ `soft` pixels)."""
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - r) * min(ry, rx) / soft + 0.5, 0.0, 1.0)


def _patient_anatomy(rng: np.random.Generator, size: int) -> dict:
    """Per-patient shape parameters, in pixels (the same along the series, modulated by z)."""
    px = FOV_MM / size
    return {
        "body": (rng.uniform(0.27, 0.33) * FOV_MM / px, rng.uniform(0.40, 0.46) * FOV_MM / px),
        "centre": (
            size / 2 + rng.uniform(-2, 2) * size / 128,
            size / 2 + rng.uniform(-3, 3) * size / 128,
        ),
        "lung": (rng.uniform(0.62, 0.72), rng.uniform(0.30, 0.36)),  # fraction of body half-axes
        "heart_shift": rng.uniform(0.05, 0.15),
        "tissue_hu": rng.uniform(30, 55),
        "lung_hu": rng.uniform(-880, -820),
    }


def _slice_hu(
    rng, a: dict, size: int, z: float, z_mm: float, nodules: list
) -> tuple[np.ndarray, bool]:
    """One axial slice in HU at relative height z in [0, 1] (z_mm along the series); returns
    (hu float64 (size, size), has_lesion)."""
    px = FOV_MM / size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = a["centre"]
    by, bx = a["body"]
    shape = 1.0 + 0.04 * np.sin(np.pi * z)  # the chest widens towards its middle
    by, bx = by * shape, bx * shape
    hu = np.full((size, size), -1000.0)
    body = _ellipse(yy, xx, cy, cx, by, bx)
    inner = _ellipse(yy, xx, cy, cx, by - 12 / px, bx - 12 / px)  # 12 mm of subcutaneous fat
    hu = hu * (1 - body) + body * (-100.0 * (1 - inner) + a["tissue_hu"] * inner)
    # lungs: two ellipses that grow towards mid-chest and shrink at apex and base
    grow = np.clip(np.sin(np.pi * (0.1 + 0.85 * z)), 0.25, 1.0)
    ly, lx = a["lung"][0] * by * grow, a["lung"][1] * bx * grow
    lungs = []
    for side in (-1, 1):
        lcx = cx + side * 0.48 * bx
        mask = _ellipse(yy, xx, cy - 0.05 * by, lcx, ly, lx)
        hu = hu * (1 - mask) + mask * a["lung_hu"]
        lungs.append((cy - 0.05 * by, lcx, ly, lx))
    # heart between the lungs, larger lower in the chest; spine and aorta behind it
    heart_r = (0.25 + 0.2 * z) * by
    heart = _ellipse(yy, xx, cy - 0.1 * by, cx + a["heart_shift"] * bx, heart_r, heart_r * 1.2)
    hu = hu * (1 - heart) + heart * 45.0
    spine_cy = cy + 0.68 * by
    cortex = _ellipse(yy, xx, spine_cy, cx, 14 / px, 14 / px)
    marrow = _ellipse(yy, xx, spine_cy, cx, 10 / px, 10 / px)
    hu = hu * (1 - cortex) + cortex * (900.0 * (1 - marrow) + 250.0 * marrow)
    aorta = _ellipse(yy, xx, spine_cy - 26 / px, cx - 18 / px, 12 / px, 12 / px)
    hu = hu * (1 - aorta) + aorta * 50.0
    # patient table under the body
    table = (yy > cy + by + 10 / px) & (yy < cy + by + 16 / px)
    hu[table] = 300.0
    # lung vessels: small bright dots, the confounders a nodule detector must ignore
    for _ in range(int(rng.integers(6, 14))):
        lcy, lcx, lry, lrx = lungs[int(rng.integers(2))]
        ang, dist = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.7))
        r = rng.uniform(1.0, 2.5) / px
        dot = _ellipse(
            yy, xx, lcy + dist * lry * np.sin(ang), lcx + dist * lrx * np.cos(ang), r, r, soft=0.8
        )
        hu = hu * (1 - dot) + dot * rng.uniform(-100, 40)
    # nodules: spheres (centre z in mm, row, col, radius mm, HU); cut where >= MIN_VISIBLE R
    has_lesion = False
    for nz, ny, nx, radius, density in nodules:
        dz = abs(z_mm - nz)
        if dz >= radius * np.sqrt(1 - MIN_VISIBLE**2):
            continue
        r = np.sqrt(radius**2 - dz**2) / px
        blob = _ellipse(yy, xx, ny, nx, r, r, soft=1.0)
        hu = hu * (1 - blob) + blob * density
        has_lesion = True
    # texture and quantum noise
    hu += 12.0 * rng.standard_normal((size, size))
    return hu, has_lesion


def _place_nodules(rng, a: dict, size: int, n_slices: int, target: int) -> list:
    """Spheres in the lungs until about `target` slices show one (or 60 tries)."""
    px = FOV_MM / size
    cy, cx = a["centre"]
    by, bx = a["body"]
    nodules, covered = [], np.zeros(n_slices, bool)
    for _ in range(60):
        if covered.sum() >= target:
            break
        radius = rng.uniform(14.0, 28.0)  # mm
        k = int(rng.integers(2, n_slices - 2))
        z = k / max(n_slices - 1, 1)
        grow = np.clip(np.sin(np.pi * (0.1 + 0.85 * z)), 0.25, 1.0)
        ly, lx = a["lung"][0] * by * grow, a["lung"][1] * bx * grow
        side = rng.choice((-1, 1))
        # keep the whole nodule inside the lung ellipse
        room = max(1.0 - (radius / px) / min(ly, lx), 0.0)
        ang, dist = rng.uniform(0, 2 * np.pi), room * np.sqrt(rng.uniform(0, 1))
        ny, nx = (
            cy - 0.05 * by + dist * ly * np.sin(ang),
            cx + side * 0.48 * bx + dist * lx * np.cos(ang),
        )
        nz = k * SLICE_MM  # mm along the series
        reach = radius * np.sqrt(1 - MIN_VISIBLE**2)
        hit = np.abs(np.arange(n_slices) * SLICE_MM - nz) < reach
        nodules.append((nz, ny, nx, radius, rng.uniform(-150.0, 60.0)))
        covered |= hit
    return nodules


def _write_slice(
    path: Path,
    hu: np.ndarray,
    *,
    patient: dict,
    series: dict,
    k: int,
    n_slices: int,
    size: int,
    uid,
) -> str:
    """One CT Image Storage file; returns its SOPInstanceUID."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

    bits, sign, slope, intercept = series["encoding"]
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sign else (0, 2**bits - 1)
    stored = np.clip(np.round((hu - intercept) / slope), lo, hi)
    centers, widths = [-600.0, 40.0], [1500.0, 400.0]  # lung and soft-tissue views
    if series["monochrome1"]:
        # MONOCHROME1 shows the lowest value white: store the mirror image (and mirror the
        # window centers), so the displayed picture is the usual CT one.
        stored = (lo + hi) - stored
        m = (lo * slope + intercept) + (hi * slope + intercept)
        centers = [m - c for c in centers]
    stored = stored.astype(np.int16 if sign else np.uint16)

    sop_uid = uid(f"sop-{k}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = patient["study_date"]
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "093000", "093512", f"0935{k % 60:02d}"
    ds.AccessionNumber = patient["accession"]
    ds.Modality = "CT"
    ds.Manufacturer, ds.ManufacturerModelName = "medgrad", "synthetic CT"
    ds.InstitutionName, ds.InstitutionAddress = patient["institution"]
    ds.ReferringPhysicianName = patient["referrer"]
    ds.StationName, ds.OperatorsName = "CT-SIM-01", "TECH^ALEX"
    ds.StudyDescription, ds.SeriesDescription = "CT CHEST WITHOUT CONTRAST", "AXIAL 5mm LUNG"
    ds.PatientName, ds.PatientID = patient["name"], patient["id"]
    ds.PatientBirthDate, ds.PatientSex = patient["birth_date"], patient["sex"]
    ds.PatientAge = patient["age"]
    ds.BodyPartExamined, ds.KVP, ds.ConvolutionKernel = "CHEST", "120", "B45f"
    ds.SliceThickness, ds.SpacingBetweenSlices = f"{SLICE_MM:.1f}", f"{SLICE_MM:.1f}"
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = patient["study_uid"], series["uid"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = series["frame_uid"], ""
    ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber = "1", "2", "1"
    ds.InstanceNumber = str(k + 1)
    px = FOV_MM / size
    z = -SLICE_MM * k  # feet-first: the table moves the patient so z decreases along the series
    ds.ImagePositionPatient = [
        f"{-FOV_MM / 2 + px / 2:.4f}",
        f"{-FOV_MM / 2 + px / 2:.4f}",
        f"{z:.2f}",
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.2f}"
    ds.PixelSpacing = [f"{px:.6f}", f"{px:.6f}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if series["monochrome1"] else "MONOCHROME2"
    ds.Rows, ds.Columns = size, size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = sign
    ds.WindowCenter, ds.WindowWidth = [f"{c:g}" for c in centers], [f"{w:g}" for w in widths]
    ds.WindowCenterWidthExplanation = ["LUNG", "SOFT TISSUE"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{intercept:g}", f"{slope:g}", "HU"
    ds.BurnedInAnnotation = "NO"
    # a private block that repeats identity, as real scanners do: de-identification must drop it
    block = ds.private_block(0x0009, "MEDGRAD DEMO", create=True)
    block.add_new(0x01, "LO", patient["name"])
    block.add_new(0x02, "LO", patient["id"])
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return sop_uid


def make_demo_data(
    out_dir: str | os.PathLike,
    *,
    n_patients: int = 40,
    slices_per_patient: int = 48,
    size: int = 128,
    lesion_fraction: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write the study set to out_dir -> out_dir (as a Path).

    Layout: out_dir/patient_NN/IMxxxxx.dcm (file names deliberately not in slice order) and
    out_dir/labels.csv with columns path (relative to out_dir), label (1 = a nodule is visible in
    the slice, 0 = none), patient_id. Every 4th patient's series is MONOCHROME1; stored values use
    three encodings (12-bit unsigned, 16-bit signed, 16-bit unsigned with slope 0.5). The same
    arguments always give byte-identical files (UIDs are derived from seed and indices).
    """
    from pydicom.uid import generate_uid

    if n_patients < 1 or slices_per_patient < 5 or size < 32:
        raise ValueError(
            f"need n_patients >= 1, slices_per_patient >= 5 and size >= 32; got "
            f"{n_patients}, {slices_per_patient}, {size}"
        )
    if not 0.0 <= lesion_fraction <= 0.9:
        raise ValueError(f"lesion_fraction must be in [0, 0.9], got {lesion_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        rng = np.random.default_rng([seed, p])

        def uid(tag: str, p=p) -> str:
            return generate_uid(entropy_srcs=["medgrad-demo", str(seed), str(p), tag])

        year = int(rng.integers(1940, 1995))
        study_year = int(rng.integers(2019, 2024))
        patient = {
            "name": f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(len(_FIRST))]}",
            "id": f"MRN{rng.integers(10**6, 10**7)}",
            "birth_date": f"{year}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
            "sex": "F" if rng.random() < 0.5 else "M",
            "age": f"{study_year - year:03d}Y",
            "study_date": f"{study_year}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
            "accession": f"ACC{rng.integers(10**5, 10**6)}",
            "institution": _INSTITUTIONS[p % len(_INSTITUTIONS)],
            "referrer": f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(len(_FIRST))]}^^DR",
            "study_uid": uid("study"),
        }
        series = {
            "uid": uid("series"),
            "frame_uid": uid("frame"),
            "encoding": _ENCODINGS[p % len(_ENCODINGS)],
            "monochrome1": p % 4 == 3,
        }
        anatomy = _patient_anatomy(rng, size)
        target = int(round(lesion_fraction * slices_per_patient))
        nodules = _place_nodules(rng, anatomy, size, slices_per_patient, target)
        folder = out / f"patient_{p:02d}"
        folder.mkdir(exist_ok=True)
        names = rng.permutation(slices_per_patient)  # file names in no particular slice order
        for k in range(slices_per_patient):
            z = k / max(slices_per_patient - 1, 1)
            hu, lesion = _slice_hu(rng, anatomy, size, z, k * SLICE_MM, nodules)
            path = folder / f"IM{int(names[k]):05d}.dcm"
            _write_slice(
                path,
                hu,
                patient=patient,
                series=series,
                k=k,
                n_slices=slices_per_patient,
                size=size,
                uid=uid,
            )
            rows.append((path.relative_to(out).as_posix(), int(lesion), patient["id"]))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerows(rows)
    return out
