"""The tiny training case the data-parallel tests run with 1 process and with N ranks."""

from __future__ import annotations

import numpy as np

import models
from engine import optim
from engine.train import fit

N_SAMPLES, SIZE = 37, 12


def case_data(seed: int = 0):
    """x float64 (37, 1, 12, 12), y (37,), groups: 11 patients of 1 to 6 images (uneven shards)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N_SAMPLES)
    x = rng.standard_normal((N_SAMPLES, 1, SIZE, SIZE)) + 0.5 * y[:, None, None, None]
    sizes = [6, 1, 5, 2, 4, 3, 6, 1, 4, 3, 2]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    return x, y, groups


def fit_case(
    comm=None,
    *,
    optimizer="adam",
    epochs=2,
    batch_size=8,
    augment=False,
    fail_rank=None,
    run_dir=None,
    resume=False,
    hang_rank=None,
    kill_rank=None,
    device="cpu",
    overlap=True,
    bucket_bytes=None,
):
    """(model, History) after `epochs` of the tiny CNN; with comm, on this rank's shard
    (overlap, bucket_bytes: engine.distributed.DistributedOptimizer's, when given)."""
    from engine import distributed

    x, y, groups = case_data()
    val = np.arange(N_SAMPLES) % 4 == 0  # a fixed validation part, by image here
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    model = models.get(
        "seed_cnn", in_channels=1, input_size=SIZE, num_classes=2, rng=np.random.default_rng(1)
    ).astype(np.float64)
    model.to(device)
    opt = {"adam": lambda p: optim.Adam(p, lr=1e-2), "sgd": lambda p: optim.SGD(p, 0.05, 0.9)}
    opt = opt[optimizer](model.parameters())
    aug = None
    if augment:
        from engine.data.transforms import Augment

        aug = Augment(scale=0.1, rotate=10.0)
    shard = None
    if comm is not None:
        if bucket_bytes is not None or not overlap:
            opt = distributed.DistributedOptimizer(
                opt, comm, bucket_bytes or distributed.BUCKET_BYTES, overlap=overlap
            )
        mine = distributed.shard_of(groups[train_idx], comm.rank, comm.size)
        shard = distributed.Shard(mine, len(train_idx), comm.rank, comm.size)
        vmine = distributed.shard_of(groups[val_idx], comm.rank, comm.size)
        train_idx, val_idx = train_idx[mine], val_idx[vmine]
        if fail_rank == comm.rank:
            x = x.copy()
            x[train_idx] = np.nan  # this rank's loss becomes NaN: a diverged rank
        if hang_rank == comm.rank:
            import time

            time.sleep(3600)
    stop = None
    if comm is not None and kill_rank == comm.rank:
        import os
        import signal

        def stop(epoch, row):  # killed between epochs, while rank 0 may be saving
            os.kill(os.getpid(), signal.SIGKILL)

    history = fit(
        model,
        opt,
        (x[train_idx], y[train_idx]),
        (x[val_idx], y[val_idx]),
        epochs=epochs,
        batch_size=batch_size,
        seed=3,
        progress=False,
        augment=aug,
        run_dir=run_dir,
        resume=resume,
        comm=comm,
        shard=shard,
        on_epoch_end=stop,
    )
    return model, history


def write_phantom_site(folder, n_patients: int, per_patient: int, seed: int, size: int = 16):
    """A site's DICOM folder of phantom images (engine.data.phantoms): P<seed>_<k>/IM<j>.dcm,
    16-bit MONOCHROME2 with a full-range window, and labels.csv (path, label, patient_id)."""
    from pathlib import Path

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    from engine.data.phantoms import make_phantoms

    folder = Path(folder)
    x, y = make_phantoms(n_patients * per_patient, size=size, seed=seed)
    rows = ["path,label,patient_id"]
    for i in range(len(y)):
        patient = f"P{seed}_{i // per_patient:03d}"
        path = folder / patient / f"IM{i % per_patient:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = (
            SecondaryCaptureImageStorage,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.PatientID, ds.Modality = patient, "OT"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = np.round(np.clip(x[i, 0], 0, 1) * 4095).astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        rows.append(f"{path.relative_to(folder)},{int(y[i])},{patient}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder
