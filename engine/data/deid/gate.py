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


# Why a file is refused: code -> (what is wrong, what the user can do). Reports and logs group
# refusals by code; every detail added to a message comes from a fixed vocabulary (attribute
# names, exception types, standard modality and SOP class codes), never from a file's values.
REFUSALS = {
    "missing-sop-uid": (
        "missing SOP UID",
        "not a storable DICOM instance; give it a SOP Class UID (0008,0016) and a SOP Instance "
        "UID (0008,0018) with a DICOM editor, or leave it out",
    ),
    "burned-in-risk": (
        "burned-in risk",
        "its pixels may show names, dates or IDs; look at them and, if they are clean, rerun with "
        "--allow-burned-in (pixels are copied as they are; cleaning them is not supported)",
    ),
    "no-class-folder": (
        "not in a class folder",
        "with --class-folders every file must lie in a sub-folder of IN named by its class; move "
        "it into one, or leave out --class-folders",
    ),
    "class-name-identifies": (
        "class folder names the patient",
        "the class folder's name equals this patient's ID or name, and class names are copied to "
        "OUT; rename the class folders",
    ),
    "invalid-structure": (
        "invalid structure",
        "a corrupt or hostile file; re-export it from its source, or leave it out",
    ),
    "unreadable": (
        "unreadable DICOM",
        "pydicom cannot parse it (truncated or malformed); re-export it from its source",
    ),
    "unwritable": (
        "cannot write",
        "its de-identified copy could not be written; check free space and permissions of OUT",
    ),
}


def refusal_message(code: str, detail: str) -> str:
    """'<what is wrong> (<detail>): <what to do>' for a code of REFUSALS."""
    what, advice = REFUSALS[code]
    return f"{what} ({detail}): {advice}" if detail else f"{what}: {advice}"


def missing_sop_uids(ds) -> list[str]:
    """Names of the SOP Class / SOP Instance UIDs that neither the dataset nor its file meta
    holds; a file without them cannot be written as a conformant DICOM file (PS3.10 7.1)."""
    meta = getattr(ds, "file_meta", None)
    missing = []
    for keyword, meta_keyword, name in (
        ("SOPClassUID", "MediaStorageSOPClassUID", "SOP Class UID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID", "SOP Instance UID"),
    ):
        in_meta = meta is not None and str(meta.get(meta_keyword, "") or "").strip()
        if not str(ds.get(keyword, "") or "").strip() and not in_meta:
            missing.append(name)
    return missing


def check_dataset(ds, *, allow_burned_in: bool) -> tuple[str, str] | None:
    """(code, detail) when ds must be refused before de-identification, else None: missing SOP
    UIDs first (nothing can be written), then the burned-in risk unless allowed."""
    missing = missing_sop_uids(ds)
    if missing:
        return "missing-sop-uid", "no " + " and no ".join(missing)
    reason = burned_in_reason(ds)
    if reason and not allow_burned_in:
        return "burned-in-risk", reason
    return None
