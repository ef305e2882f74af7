"""Fixtures for the data tests: small DICOM files built with pydicom, and a tiny demo study set."""

from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")


def write_ct(
    path,
    stored,
    *,
    photometric="MONOCHROME2",
    slope=1.0,
    intercept=-1024.0,
    window=(40.0, 400.0),
    position=(0.0, 0.0, 0.0),
    orientation=(1, 0, 0, 0, 1, 0),
    spacing=(0.7, 0.7),
    series_uid="1.2.3.4",
    patient_id="P1",
    bits_stored=12,
    signed=False,
    **extra,
):
    """Write a single-frame CT Image Storage file with `stored` (h, w) integer values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    stored = np.asarray(stored)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.Modality, ds.PatientID = "CT", patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", series_uid
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    ds.ImagePositionPatient = [f"{v:g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
    ds.PixelSpacing = [f"{v:g}" for v in spacing]
    ds.SliceThickness = "1"
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small synthetic study set: 6 patients x 6 slices of 32 x 32 (about 1 s to write)."""
    from engine.data.synthetic_dicom import make_demo_data

    return make_demo_data(
        tmp_path_factory.mktemp("demo"), n_patients=6, slices_per_patient=6, size=32, seed=1
    )
