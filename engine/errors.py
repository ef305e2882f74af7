"""The project's error types: one base class, so callers can catch everything medgrad raises on bad input."""

from __future__ import annotations


class MedgradError(Exception):
    """Base class of every error medgrad raises on bad input (files, arguments, devices)."""


class DeviceError(MedgradError, ValueError):
    """An op got arrays on two devices, or a device/kernel flavour that is not available here."""


class SerializationError(MedgradError):
    """A model or state file is missing, truncated, tampered with, pickled, or has the wrong contents."""


class DataError(MedgradError, ValueError):
    """A data file or folder (image, label CSV, IDX, .npz, cache shard) is unreadable or malformed."""


class DicomReadError(DataError):
    """A DICOM file cannot be turned into pixels: not DICOM, truncated, no pixel data, no decoder, too big."""


class ArgumentError(MedgradError, ValueError):
    """A user-supplied choice is invalid (unknown model name, a layer that is not a conv, a class
    index out of range): reported by the `medgrad` command as one line, without a traceback."""


class MedgradWarning(UserWarning):
    """Base class of the warnings medgrad emits: something ran, but not the way it was asked to."""


class CaptureWarning(MedgradWarning):
    """A training step could not be captured as a CUDA graph (engine.graph) and runs eagerly; the
    message names the op or the reason."""
