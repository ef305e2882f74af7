"""Test data for de-identification: a "PHI-max" dataset filling every concrete Table E.1-1 tag
with a unique sentinel (nested sequences, file meta, private blocks, overlays, curves, padding),
small CT studies with cross-references, and the local pydicom / pydicom-data corpus."""

from __future__ import annotations

import json
import string
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

STRING_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"}
NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
BYTES_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
UID_ROOT = "1.2.826.0.1.3680043.10.543."  # a test root; every sentinel UID lies under it


class Sentinels:
    """Unique values that must never appear in any output; `texts` are grep-able in raw bytes."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.texts: set[str] = set()
        self.temporal: set[str] = set()  # DA/DT/TM sentinels (a date shift may collide with one)

    def word(self) -> str:
        letters = np.array(list(string.ascii_uppercase + string.digits))
        text = "Q" + "".join(self.rng.choice(letters, 11))  # 12 chars: fits SH/CS/AE (16)
        self.texts.add(text)
        return text

    def uid(self) -> str:
        text = UID_ROOT + str(int(self.rng.integers(10**8, 10**9))) + "." + str(len(self.texts))
        self.texts.add(text)
        return text

    def date(self) -> str:
        text = f"19{self.rng.integers(30, 99)}{self.rng.integers(1, 13):02d}{self.rng.integers(1, 29):02d}"
        self.texts.add(text)
        self.temporal.add(text)
        return text

    def value(self, vr: str):
        """A sentinel consistent with the VR (what pydicom accepts without a warning)."""
        if vr in STRING_VRS:
            return self.word()
        if vr == "UI":
            return self.uid()
        if vr == "DA":
            return self.date()
        if vr == "DT":
            return self.date() + "101112.123456"
        if vr == "TM":
            text = f"1{self.rng.integers(0, 10)}{self.rng.integers(10, 60)}{self.rng.integers(10, 60)}.{self.rng.integers(100000, 999999)}"
            self.texts.add(text)
            self.temporal.add(text)
            return text
        if vr == "AS":
            return "042Y"
        if vr == "IS":
            text = str(int(self.rng.integers(10**8, 10**9)))
            self.texts.add(text)
            return text
        if vr == "DS":
            text = f"{int(self.rng.integers(1000, 9999))}.{int(self.rng.integers(100000, 999999))}"
            self.texts.add(text)
            return text
        if vr in NUMBER_VRS:
            return int(self.rng.integers(1, 30000))
        if vr in BYTES_VRS:
            return self.word().encode()
        return None


def table_rows() -> list[dict]:
    raw = resources.files("engine.data").joinpath("resources/confidentiality_profile.json")
    return json.loads(raw.read_bytes())


def _concrete_tags() -> list[int]:
    tags = []
    for row in table_rows():
        t = row["tag"]
        if "X" in t.upper() or t.upper().startswith("(GGGG"):
            continue
        tag = int(t[1:5] + t[6:10], 16)
        if tag >> 16 not in (0x0000, 0x0002):  # command set: not in files; file meta: set apart
            tags.append(tag)
    return tags


def _nested_phi(s: Sentinels, depth: int) -> Dataset:
    """An item with PHI at this level and, below it, `depth` more levels of a sequence that the
    table does not list (so the de-identifier must recurse rather than drop it)."""
    item = Dataset()
    item.PatientName = s.word()
    item.PatientID = s.word()
    item.InstitutionName = s.word()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = s.uid()
    item.StudyDate = s.date()
    block = item.private_block(0x0029, "SENTINEL NESTED", create=True)
    block.add_new(0x01, "LO", s.word())
    if depth > 0:
        item.ReferencedSeriesSequence = Sequence([_nested_phi(s, depth - 1)])
    return item


def phi_max_dataset(seed: int = 0) -> tuple[Dataset, Sentinels]:
    """-> (dataset with every concrete Table E.1-1 attribute filled, its Sentinels)."""
    s = Sentinels(seed)
    ds = Dataset()
    for tag in _concrete_tags():
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        if vr == "SQ":
            ds.add_new(tag, vr, Sequence([_nested_phi(s, 2)]))
        else:
            value = s.value(vr)
            if value is not None:
                ds.add_new(tag, vr, value)
    # A kept (non-table) sequence nested three levels deep, with PHI at every level.
    ds.ReferencedSeriesSequence = Sequence([_nested_phi(s, 3)])
    block = ds.private_block(0x0009, "SENTINEL CREATOR", create=True)
    block.add_new(0x01, "LO", s.word())
    block.add_new(0x02, "SQ", Sequence([_nested_phi(s, 1)]))
    block.add_new(0x03, "UI", s.uid())
    # Overlay (60xx) and curve (50xx) groups, trailing padding.
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000022, "LO", s.word())  # Overlay Description
    ds.add_new(0x60001500, "LO", s.word())  # Overlay Label
    ds.add_new(0x60003000, "OW", s.word().encode() + b"\0" * 4)
    ds.add_new(0x60004000, "LT", s.word())
    ds.add_new(0x50002500, "LO", s.word())  # Curve Label
    ds.add_new(0x50003000, "OB", s.word().encode())
    ds.add_new(0xFFFCFFFC, "OB", s.word().encode())
    _add_ct_image(ds, s, modality="CT")
    return ds, s


def _add_ct_image(ds: Dataset, s: Sentinels, *, modality: str, pixels: np.ndarray | None = None):
    """Make ds a small, valid CT image file (8 x 8 uint16) with its own file meta."""
    ds.SOPClassUID = CTImageStorage
    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = s.uid()
    ds.Modality = modality
    ds.BurnedInAnnotation = "NO"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels is None:
        pixels = s.rng.integers(0, 4096, (8, 8)).astype(np.uint16)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = s.word()
    ds.file_meta = meta
    ds.preamble = s.word().encode().ljust(128, b"\0")


def study_set(
    folder: Path, *, seed: int = 0, patients: int = 1, series: int = 2, instances: int = 3
) -> dict:
    """Write patients x series x instances CT files with cross-references under folder.

    Each instance refers to the previous one of its series (Referenced Image Sequence) and to the
    series' Frame of Reference; dates differ per instance. Returns {path: Dataset} (originals).
    """
    s = Sentinels(seed)
    out = {}
    for p in range(patients):
        patient, name, birth = s.word(), s.word(), s.date()
        study = s.uid()
        for se in range(series):
            series_uid, frame = s.uid(), s.uid()
            previous = None
            for i in range(instances):
                ds = Dataset()
                ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient, name, birth
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
                ds.FrameOfReferenceUID = frame
                ds.SOPInstanceUID = s.uid()
                ds.StudyDate = f"2020{p + 1:02d}{10 + se:02d}"
                ds.ContentDate = f"2020{p + 1:02d}{12 + i:02d}"
                ds.AcquisitionDateTime = f"2020{p + 1:02d}{12 + i:02d}101500"
                ds.StudyTime = "101500"
                ds.InstitutionName = s.word()
                ds.InstanceNumber = i + 1
                if previous is not None:
                    ref = Dataset()
                    ref.ReferencedSOPClassUID = CTImageStorage
                    ref.ReferencedSOPInstanceUID = previous
                    ds.ReferencedImageSequence = Sequence([ref])
                _add_ct_image(ds, s, modality="CT")
                path = folder / f"patient{p}" / f"{name}_s{se}_i{i}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                out[path] = ds
                previous = ds.SOPInstanceUID
    return out


def corpus_files() -> list[Path]:
    """Every file of pydicom's bundled test data and, when installed, of pydicom-data: found on
    disk only (pydicom's get_testdata_files may try to download missing files; this never does)."""
    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # the pydicom-data package

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return sorted(p for r in roots for p in r.rglob("*") if p.is_file())


def read_quietly(path):
    """dcmread without force, pydicom's value-validation warnings silenced (the corpus holds
    deliberately odd values); raises whatever pydicom raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)
