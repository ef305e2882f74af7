"""Which files the folder anonymizer refuses or skips before de-identifying them, and why:
pixels that may carry burned-in identity, and directories (DICOMDIR) that are not images."""

from __future__ import annotations

# Modalities and SOP classes that routinely burn identity into the pixels (PS3.15 E.3.1 and
# RELIABILITY P5): an absent BurnedInAnnotation is treated as YES for these.
BURN_IN_MODALITIES = frozenset({"US", "IVUS", "ES", "XA", "RF", "XC", "GM", "SM", "OT"})
BURN_IN_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (and its multi-frame variants)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound (single and multi-frame)
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.77.1.",  # Visible light: endoscopy, microscopy, photography, video
    "1.2.840.10008.5.1.4.1.1.12.",  # X-Ray Angiography / RF
)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: file paths, not images


def burned_in_reason(ds) -> str | None:
    """Why ds may carry identity burned into its pixels, or None. YES always counts; an absent
    BurnedInAnnotation counts for modalities and SOP classes that routinely burn in."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return None
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag == "NO":
        return None
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if modality in BURN_IN_MODALITIES:
        return f"BurnedInAnnotation absent for modality {modality}"
    if sop_class.startswith(BURN_IN_SOP_PREFIXES):
        return f"BurnedInAnnotation absent for SOP class {sop_class}"
    return None
