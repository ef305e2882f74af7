"""Data: synthetic phantoms, datasets, loaders, augmentation and patient-level splits.

pydicom and scipy are imported lazily, inside the modules that need them.
"""

from engine.data.volumes import (  # noqa: E402  (volumes: NIfTI / DICOM series, canonical LPS)
    check_aligned,
    read_mask,
    read_pair,
    read_volume,
    write_mask,
    write_volume,
)

__all__ = ["check_aligned", "read_mask", "read_pair", "read_volume", "write_mask", "write_volume"]
