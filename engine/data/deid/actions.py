"""De-identifying one pydicom Dataset in place by the Basic Profile of Table E.1-1: every action
code (X, Z, D, U, K, C and the conditional ones) at any sequence depth and in the file meta, and
the de-identification markers."""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from dataclasses import dataclass, field

from engine.data.deid.profile import (
    MAX_DEPTH,
    SHIFT_DATES,
    Rule,
    element_values,
    load_profile,
    pick_action,
    tag_text,
)
from engine.data.deid.pseudonyms import (
    date_offset_days,
    is_standard_uid,
    pseudonym,
    remap_uid,
)
from engine.errors import DataError

# Codes of PS3.16 CID 7050 "De-identification Method".
_METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    SHIFT_DATES: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
}

PSEUDONYM_TAGS = frozenset({0x00100010, 0x00100020})  # Patient's Name, Patient ID
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
}
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})


@dataclass
class _Context:
    key: bytes
    options: tuple[str, ...]
    patient: str  # original PatientID (or name): only ever fed to the keyed hash
    counts: Counter = field(default_factory=Counter)

    def count(self, tag: int | str, name: str, action: str) -> None:
        self.counts[(tag if isinstance(tag, str) else tag_text(tag), name, action)] += 1


def _empty_value(vr: str):
    return "" if vr not in _NUMERIC_VRS | _BYTES_VRS else None


def _dummy(vr: str):
    """A value 'consistent with the VR' (PS3.15 action D) that carries nothing of the original."""
    if vr in _DUMMY_BY_VR:
        return _DUMMY_BY_VR[vr]
    if vr in _NUMERIC_VRS:
        return 0
    if vr in _BYTES_VRS:
        return b"\0\0"
    return _DUMMY_TEXT


def _shift_date(text: str, days: int, vr: str) -> str | None:
    """DA 'YYYYMMDD' or DT 'YYYYMMDD...' shifted by days; None when it is not a full date."""
    text = text.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        day = _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        return (day + _dt.timedelta(days=days)).strftime("%Y%m%d") + text[8:]
    except (ValueError, OverflowError):
        return None


def _set_values(elem, values: list) -> None:
    elem.value = values[0] if len(values) == 1 else values


def _apply(ds, elem, action: str, rule: Rule, ctx: _Context, depth: int) -> None:
    """Carry out one action code on one element of ds (in place)."""
    tag, vr = int(elem.tag), elem.VR
    if action == "C":
        # Clean by the applied option: dates shifted per patient. Times of day are kept: whole-day
        # shifts leave them valid, and the option retains the temporal relationships.
        if vr in ("DA", "DT"):
            days = date_offset_days(ctx.patient, ctx.key)
            shifted = [_shift_date(str(v), days, vr) for v in element_values(elem)]
            if all(s is not None for s in shifted):
                if shifted:
                    _set_values(elem, shifted)
                ctx.count(tag, rule.name, "C (date shifted)")
                return
        elif vr == "TM":
            ctx.count(tag, rule.name, "C (time kept)")
            return
        action = pick_action(rule, ())  # not cleanable by shifting: fall back to the Basic Profile
    if vr == "UI" and action == "D":
        action = "U"
    if action in ("Z", "D") and tag in PSEUDONYM_TAGS and depth == 0:
        # A keyed dummy (allowed by Z and D) rather than a blank: patient-level splits still work.
        elem.value = pseudonym(ctx.patient, ctx.key)
        action += " (pseudonym)"
    elif action == "X":
        del ds[tag]
    elif action == "Z":
        elem.value = [] if vr == "SQ" else _empty_value(vr)
    elif action == "D":
        from pydicom.dataset import Dataset

        elem.value = [Dataset()] if vr == "SQ" else _dummy(vr)
    elif action == "U":
        if element_values(elem):
            _set_values(elem, [remap_uid(str(v), ctx.key) for v in element_values(elem)])
    elif action in ("U*", "K"):
        if vr == "SQ":
            for item in elem.value:
                _deidentify_items(item, ctx, depth + 1)
    ctx.count(tag, rule.name, action)


def _deidentify_items(ds, ctx: _Context, depth: int) -> None:
    """Apply the profile to every element of ds and, recursively, of the items it keeps."""
    if depth > MAX_DEPTH:
        raise DataError(f"sequences nested deeper than {MAX_DEPTH} levels")
    profile = load_profile()
    for tag in list(ds.keys()):
        tag = int(tag)
        group, element = tag >> 16, tag & 0xFFFF
        if group % 2 == 1:
            del ds[tag]
            ctx.count("(GGGG,EEEE) odd GGGG", "Private attributes", "X")
            continue
        if element == 0 and group != 0x0002:
            del ds[tag]  # group lengths (retired) would be wrong after removals
            continue
        if 0x6000 <= group <= 0x601E and element not in (0x3000, 0x4000):
            # Overlay attributes other than data/comments (labels, descriptions can hold text):
            # an overlay without its data is meaningless, so the whole group goes.
            del ds[tag]
            ctx.count(f"({group:04X},XXXX)", "Overlay group (with Overlay Data)", "X")
            continue
        elem = ds[tag]
        rule = profile.rule_for(tag)
        if rule is not None:
            _apply(ds, elem, pick_action(rule, ctx.options), rule, ctx, depth)
        elif elem.VR == "UI":
            # Not in the table but an instance UID all the same (e.g. a private-ish reference):
            # remapped like U so no original UID survives; class/transfer-syntax UIDs are kept.
            values = [str(v) for v in element_values(elem)]
            if values and not any(is_standard_uid(elem.keyword, v) for v in values):
                _set_values(elem, [remap_uid(v, ctx.key) for v in values])
                ctx.count(tag, elem.keyword or "UID not in Table E.1-1", "U")
        elif elem.VR == "SQ":
            for item in elem.value:
                _deidentify_items(item, ctx, depth + 1)


def _file_meta_cleanup(meta, ctx: _Context) -> None:
    """File meta: AE titles and private information identify the sending site, so they go; the
    Media Storage SOP Instance UID is remapped by its table row (U)."""
    for tag in (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102):
        if tag in meta:
            del meta[tag]
            ctx.count(tag, "File meta sender information", "X")
    _deidentify_items(meta, ctx, 0)


def complete_file_meta(ds) -> None:
    """Fill Media Storage SOP Class/Instance UID from the (de-identified) dataset when an input's
    file meta lacks them, so the output is a conformant file (PS3.10 7.1)."""
    meta = ds.file_meta
    if not meta.get("MediaStorageSOPClassUID") and ds.get("SOPClassUID"):
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if not meta.get("MediaStorageSOPInstanceUID") and ds.get("SOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def patient_key(ds) -> str:
    """The original patient identity, only ever used inside the keyed hash."""
    pid = str(ds.get("PatientID", "") or "").strip()
    return pid if pid else "name:" + str(ds.get("PatientName", "") or "").strip()


def deidentify_dataset(ds, *, key: bytes, shift_dates: bool = False) -> Counter:
    """De-identify a pydicom Dataset in place by the Basic Profile of Table E.1-1.

    Every listed attribute, at any sequence depth and in the file meta, gets its action: X removed,
    Z emptied (Patient's Name/ID get a keyed pseudonym, a Z dummy that keeps patient-level splits),
    D a dummy value of the VR (a sequence becomes one empty item), U a keyed '2.25.' UID,
    X/Z/U* sequences kept with their contents de-identified; private tags, curves and overlays
    are removed. shift_dates applies the Modified Dates option (per-patient offset). Pixel data are
    never touched. Returns counts of (tag, name, action); no original value is kept anywhere.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    options = (SHIFT_DATES,) if shift_dates else ()
    ctx = _Context(key=key, options=options, patient=patient_key(ds))
    _deidentify_items(ds, ctx, 0)
    if getattr(ds, "file_meta", None) is not None:
        _file_meta_cleanup(ds.file_meta, ctx)
    if hasattr(ds, "preamble") and ds.preamble is not None:
        ds.preamble = b"\0" * 128  # the preamble can hold anything (TIFF headers, text)
    ds.PatientIdentityRemoved = "YES"
    method_codes = ["basic", *options]
    meanings = [_METHOD_CODES[name][1] for name in method_codes]  # each fits LO (64 chars)
    ds.DeidentificationMethod = meanings[0] if len(meanings) == 1 else meanings
    items = []
    for name in method_codes:
        code, meaning = _METHOD_CODES[name]
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if shift_dates else "REMOVED"
    return ctx.counts
