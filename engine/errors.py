"""The project's error types: one base class, so callers can catch everything medgrad raises on bad input."""

from __future__ import annotations


class MedgradError(Exception):
    """Base class of every error medgrad raises on bad input (files, arguments, devices)."""


class DeviceError(MedgradError, ValueError):
    """An op got arrays on two devices, or a device/kernel flavour that is not available here."""


class SerializationError(MedgradError):
    """A model or state file is missing, truncated, tampered with, pickled, or has the wrong contents."""
