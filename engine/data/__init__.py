"""Data: synthetic phantoms, datasets, loaders, augmentation and patient-level splits.

pydicom and scipy are imported lazily, inside the modules that need them.
"""
