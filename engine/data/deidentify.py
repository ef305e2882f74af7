"""De-identify DICOM files by the Basic Application Level Confidentiality Profile (DICOM PS3.15
Annex E), and a checker that finds whatever that profile says must be removed or replaced.

Both are driven by Table E.1-1 as data (engine/data/resources/confidentiality_profile.json, 621 rows
from the innolitics/dicom-standard extraction), never by a hand-typed tag list. pydicom is imported
lazily, inside the functions that need it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from engine.errors import DataError

# SHA-256 of the shipped table; checked on load so an accidental edit cannot weaken the profile.
TABLE_SHA256 = "a99a35d1278e2bace8d90ff791b11aea2d45f1e3e1230388eb5224c9dbcd29e6"
TABLE_SOURCE = (
    "DICOM PS3.15 Table E.1-1 (innolitics/dicom-standard confidentiality_profile_attributes.json)"
)

# Option columns of Table E.1-1 that the de-identifier can apply on top of the Basic Profile.
SHIFT_DATES = "rtnLongModifDatesOpt"  # Retain Longitudinal Temporal Information, Modified Dates

# Preference among the alternatives of a conditional code (Z/D, X/Z/D, ...): without knowing the
# IOD's attribute types, D (a dummy) keeps any Type 1 attribute valid and Z keeps Type 2 present.
_PREFERENCE = ("U*", "D", "Z", "X", "U", "K", "C")

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

# Codes of PS3.16 CID 7050 "De-identification Method".
_METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    SHIFT_DATES: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
}

MAX_DEPTH = 64  # sequences nested deeper than this are hostile, not clinical
PSEUDONYM_TAGS = frozenset({0x00100010, 0x00100020})  # Patient's Name, Patient ID
LOG_NAME = "deidentification-log.json"
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
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1: the Basic Profile code (X, Z, D, U, Z/D, X/Z/U*, ...) and the codes
    of the options (column name -> K or C)."""

    tag: str
    name: str
    action: str
    options: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.action.split("/"))


@dataclass(frozen=True)
class Profile:
    """Table E.1-1 indexed for lookup: exact tags, wildcard rows (curves, overlays) as masks, and
    the private-attribute row."""

    exact: dict[int, Rule]
    patterns: tuple[tuple[int, int, Rule], ...]  # (mask, value, rule): tag & mask == value
    private: Rule

    def rule_for(self, tag: int) -> Rule | None:
        """The rule for a tag (int, 0xGGGGEEEE), or None when Table E.1-1 does not list it."""
        if tag in self.exact:
            return self.exact[tag]
        if (tag >> 16) % 2 == 1:
            return self.private
        for mask, value, rule in self.patterns:
            if tag & mask == value:
                return rule
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.patterns) + 1


_OPTION_COLUMNS = (
    "rtnSafePrivOpt",
    "rtnUIDsOpt",
    "rtnDevIdOpt",
    "rtnInstIdOpt",
    "rtnPatCharsOpt",
    "rtnLongFullDatesOpt",
    "rtnLongModifDatesOpt",
    "cleanDescOpt",
    "cleanStructContOpt",
    "cleanGraphOpt",
)
_CODES = frozenset({"X", "Z", "D", "U", "K", "C", "U*"})


def _parse_tag(text: str) -> tuple[int, int] | None:
    """'(0010,0010)' -> (0xFFFFFFFF, 0x00100010); '(60XX,3000)' -> (0xFF00FFFF, 0x60003000)."""
    m = re.fullmatch(r"\(([0-9A-FX]{4}),([0-9A-FX]{4})\)", text.upper())
    if not m:
        return None
    digits = m.group(1) + m.group(2)
    mask = int("".join("0" if c == "X" else "F" for c in digits), 16)
    return mask, int(digits.replace("X", "0"), 16)


def parse_profile(rows: list[dict]) -> Profile:
    """Build a Profile from the table's rows; any row it cannot understand is an error, so a
    changed table never silently drops an attribute."""
    exact, patterns, private = {}, [], None
    for row in rows:
        codes = row["basicProfile"].split("/")
        options = {c: row[c] for c in _OPTION_COLUMNS if c in row}
        if not set(codes) <= _CODES or not set(options.values()) <= _CODES:
            raise DataError(f"Table E.1-1 row {row['tag']}: unknown action {row['basicProfile']!r}")
        rule = Rule(row["tag"], row["name"], row["basicProfile"], options)
        if row["tag"].upper().startswith("(GGGG,EEEE)"):
            private = rule
            continue
        parsed = _parse_tag(row["tag"])
        if parsed is None:
            raise DataError(f"Table E.1-1: cannot parse tag {row['tag']!r} ({row['name']})")
        mask, value = parsed
        if mask == 0xFFFFFFFF:
            exact[value] = rule
        else:
            patterns.append((mask, value, rule))
    if private is None:
        raise DataError("Table E.1-1 has no private-attributes row")
    return Profile(exact, tuple(patterns), private)


@lru_cache(maxsize=1)
def load_profile() -> Profile:
    """The shipped Table E.1-1 (checked against TABLE_SHA256), parsed once per process."""
    raw = resources.files("engine.data").joinpath("resources/confidentiality_profile.json")
    data = raw.read_bytes()
    if hashlib.sha256(data).hexdigest() != TABLE_SHA256:
        raise DataError(f"{raw}: Table E.1-1 data does not match its recorded SHA-256")
    return parse_profile(json.loads(data))


def _pick(rule: Rule, options: Iterable[str]) -> str:
    """The one action to take for a rule: an applied option's code wins, else the preferred
    alternative of the Basic Profile code."""
    for column in options:
        if column in rule.options:
            return rule.options[column]
    return next(code for code in _PREFERENCE if code in rule.choices)


# --------------------------------------------------------------------------------------------
# Keyed pseudonyms: UIDs, patient IDs and date offsets


def _mac(key: bytes, purpose: str, text: str) -> bytes:
    return hmac.new(key, f"{purpose}\0{text}".encode(), hashlib.sha256).digest()


def remap_uid(uid: str, key: bytes) -> str:
    """A UID -> '2.25.<decimal of a UUID>' from HMAC-SHA256(key, uid): the same key maps the same
    UID to the same value in every file; without the key the original cannot be recovered or
    linked. Never uses pydicom.generate_uid(prefix=None), which is random."""
    digest = _mac(key, "uid", uid.strip("\0 "))[:16]
    return f"2.25.{uuid.UUID(bytes=digest, version=4).int}"


def pseudonym(patient_id: str, key: bytes) -> str:
    """A keyed patient pseudonym ('ANON-' + 12 hex digits), stable per patient and key."""
    return "ANON-" + _mac(key, "patient", patient_id).hex()[:12].upper()


def date_offset_days(patient_id: str, key: bytes) -> int:
    """Per-patient date shift in days, in [-3650, -1]: secret without the key, same for every file
    of the patient, so intervals between that patient's dates are kept exactly."""
    return -1 - int.from_bytes(_mac(key, "dates", patient_id)[:8], "big") % 3650


def is_valid_uid(text: str) -> bool:
    """UID syntax of PS3.5 9.1: digits and dots, no empty or leading-zero component, <= 64 chars."""
    return 0 < len(text) <= 64 and bool(_UID_RE.match(text))


def _is_standard_uid(keyword: str, value: str) -> bool:
    """Class and transfer-syntax UIDs name what a file is, not who it is about: they are kept."""
    from pydicom.uid import UID_dictionary

    return keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID" or value in UID_dictionary


# --------------------------------------------------------------------------------------------
# De-identifying one dataset


@dataclass
class _Context:
    key: bytes
    options: tuple[str, ...]
    patient: str  # original PatientID (or name): only ever fed to the keyed hash
    counts: Counter = field(default_factory=Counter)

    def count(self, tag: int | str, name: str, action: str) -> None:
        self.counts[(tag if isinstance(tag, str) else _tag_text(tag), name, action)] += 1


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


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


def _values(elem) -> list:
    from pydicom.multival import MultiValue

    v = elem.value
    if v is None or v == "":
        return []
    return list(v) if isinstance(v, MultiValue | list | tuple) else [v]


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
            shifted = [_shift_date(str(v), days, vr) for v in _values(elem)]
            if all(s is not None for s in shifted):
                if shifted:
                    _set_values(elem, shifted)
                ctx.count(tag, rule.name, "C (date shifted)")
                return
        elif vr == "TM":
            ctx.count(tag, rule.name, "C (time kept)")
            return
        action = _pick(rule, ())  # not cleanable by shifting: fall back to the Basic Profile
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
        if _values(elem):
            _set_values(elem, [remap_uid(str(v), ctx.key) for v in _values(elem)])
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
            _apply(ds, elem, _pick(rule, ctx.options), rule, ctx, depth)
        elif elem.VR == "UI":
            # Not in the table but an instance UID all the same (e.g. a private-ish reference):
            # remapped like U so no original UID survives; class/transfer-syntax UIDs are kept.
            values = [str(v) for v in _values(elem)]
            if values and not any(_is_standard_uid(elem.keyword, v) for v in values):
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


def _complete_file_meta(ds) -> None:
    """Fill Media Storage SOP Class/Instance UID from the (de-identified) dataset when an input's
    file meta lacks them, so the output is a conformant file (PS3.10 7.1)."""
    meta = ds.file_meta
    if not meta.get("MediaStorageSOPClassUID") and ds.get("SOPClassUID"):
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if not meta.get("MediaStorageSOPInstanceUID") and ds.get("SOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _patient_key(ds) -> str:
    """The original patient identity, only ever used inside the keyed hash."""
    pid = str(ds.get("PatientID", "") or "").strip()
    return pid if pid else "name:" + str(ds.get("PatientName", "") or "").strip()


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
    ctx = _Context(key=key, options=options, patient=_patient_key(ds))
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


# --------------------------------------------------------------------------------------------
# The checker


@dataclass(frozen=True)
class Finding:
    """An attribute that the Basic Profile says must go or change but did not. `path` names tags
    and item indices only, e.g. '(0008,1140)[0](0008,1155)'; it never holds a value."""

    path: str
    name: str
    action: str
    problem: str


def _collect_uids(ds, out: set[str], depth: int = 0) -> set[str]:
    """Every instance-identifying UID value in ds, at any depth (class/syntax UIDs excluded)."""
    if depth > MAX_DEPTH:
        return out
    for elem in _elements(ds):
        if elem.VR == "UI":
            out.update(str(v) for v in _values(elem) if not _is_standard_uid(elem.keyword, str(v)))
        elif elem.VR == "SQ":
            for item in elem.value:
                _collect_uids(item, out, depth + 1)
    return out


def _elements(ds) -> list:
    metas = [ds.file_meta] if getattr(ds, "file_meta", None) is not None else []
    return [m[t] for m in metas for t in m.keys()] + [ds[t] for t in ds.keys()]


def _same(a, b) -> bool:
    """Whether an output value still equals a non-empty original value."""
    if b.VR == "SQ":
        return len(b.value) > 0 and list(a.value) == list(b.value)
    return bool(_values(b)) and _values(a) == _values(b)


def find_residual_phi(ds, original=None, *, options: Iterable[str] = ()) -> list[Finding]:
    """Check a de-identified Dataset against Table E.1-1; [] means nothing is left that the Basic
    Profile says to remove, blank or replace.

    Per row, the element passes when one of its allowed codes holds: X absent; Z empty (or, with
    `original`, changed); D changed; U every value a valid UID that was not an original UID; U*/K
    kept with contents checked; C (an applied option) changed for dates, kept for times. Private
    tags, curves, overlays and a missing PatientIdentityRemoved=YES are findings too. Without the
    original, value comparisons are skipped (structure only).
    """
    profile, options = load_profile(), tuple(options)
    findings: list[Finding] = []
    originals = _collect_uids(original, set()) if original is not None else set()

    def walk(out, orig, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            findings.append(Finding(path, "", "", f"nested deeper than {MAX_DEPTH}"))
            return
        for elem in _elements(out) if depth == 0 else [out[t] for t in out.keys()]:
            tag = int(elem.tag)
            where = path + _tag_text(tag)
            before = None
            if orig is not None:
                meta = getattr(orig, "file_meta", None) if tag >> 16 == 2 and depth == 0 else orig
                before = meta.get(tag) if meta is not None else None
            rule = profile.rule_for(tag)
            if tag >> 16 in range(0x6000, 0x601F, 2) and rule is None:
                rule = Rule("(60XX,XXXX)", "Overlay group", "X")
            if rule is None:
                values = [str(v) for v in _values(elem)] if elem.VR == "UI" else []
                if any(v in originals and not _is_standard_uid(elem.keyword, v) for v in values):
                    findings.append(Finding(where, elem.keyword, "U", "original UID kept"))
            else:
                problem = _check_rule(elem, before, rule, options, originals)
                if problem:
                    findings.append(Finding(where, rule.name, rule.action, problem))
            if elem.VR == "SQ" and elem.value is not None:
                orig_items = list(before.value) if before is not None and before.VR == "SQ" else []
                for i, item in enumerate(elem.value):
                    o = orig_items[i] if i < len(orig_items) else None
                    walk(item, o, f"{where}[{i}]", depth + 1)

    walk(ds, original, "", 0)
    if str(ds.get("PatientIdentityRemoved", "")) != "YES":
        findings.append(Finding("(0012,0062)", "Patient Identity Removed", "", "not YES"))
    return findings


def _check_rule(elem, before, rule: Rule, options: tuple[str, ...], originals: set[str]) -> str:
    """'' when one of the rule's allowed codes is satisfied by elem, else what is wrong."""
    choices = set(rule.choices) | {rule.options[c] for c in options if c in rule.options}
    empty = not _values(elem) if elem.VR != "SQ" else not elem.value
    changed = before is None or not _same(elem, before)
    if "U*" in choices or "K" in choices:
        return ""
    if "C" in choices and (elem.VR == "TM" or changed):
        return ""
    if "Z" in choices and (empty or changed):
        return ""
    if "D" in choices and changed:
        if elem.VR != "UI" or all(str(v) not in originals for v in _values(elem)):
            return ""
    if "U" in choices:
        values = [str(v) for v in _values(elem)]
        if not all(is_valid_uid(v) for v in values):
            return "not a valid UID"
        if any(v in originals for v in values):
            return "original UID kept"
        return ""
    return "present" if choices == {"X"} else "unchanged"


# --------------------------------------------------------------------------------------------
# Files and folders


@dataclass
class AnonymizeReport:
    """What a run did. `refused` holds input paths and reasons for the caller only; the log file
    written beside the outputs holds counts, never input paths or original values."""

    written: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count (not DICOM, DICOMDIR)
    counts: Counter = field(default_factory=Counter)  # (tag, name, action) -> count
    log_path: Path | None = None


def _check_folders(src: Path, dst: Path) -> None:
    """Refuse any OUT that could write into (or over) the input folder."""
    in_dir = src if src.is_dir() else src.parent
    if dst == in_dir or dst.is_relative_to(in_dir):
        raise DataError(f"{dst}: the output folder must not be the input folder or inside it")
    if in_dir.is_relative_to(dst):
        raise DataError(f"{dst}: the output folder must not contain the input folder")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst}: the output must be a new or empty folder")


def _inputs(src: Path) -> list[Path]:
    """Regular files under src (or src itself), sorted; symlinks are not followed."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DataError(f"{src}: no such file or folder")
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())


def _out_component(value, fallback: str) -> str:
    """A path component from a remapped UID (digits and dots only), never from original text."""
    text = str(value or "")
    return text if is_valid_uid(text) and text.startswith("2.25.") else fallback


def anonymize(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    key: str | bytes | None = None,
    shift_dates: bool = False,
    allow_burned_in: bool = False,
) -> AnonymizeReport:
    """De-identify every DICOM file under src into the new folder dst (PS3.15 Basic Profile).

    Outputs go to dst/<study UID>/<series UID>/<SOP instance UID>.dcm, all remapped UIDs, so no
    name comes from input paths or attribute text. The same key gives the same output; without a
    key a random one is used (not saved: the mapping cannot be repeated). Files whose pixels may
    hold burned-in identity are refused unless allow_burned_in. Non-DICOM files and DICOMDIRs are
    skipped. A JSON log of counts (tags, actions, files) goes to dst/deidentification-log.json.
    Raises DataError if dst is, is inside, or contains the input folder, or is not empty.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    _check_folders(src, dst)
    given_key = key is not None
    key_bytes = os.urandom(32) if key is None else key.encode() if isinstance(key, str) else key
    if given_key and len(key_bytes) == 0:
        raise DataError("--key: the key must not be empty")
    report = AnonymizeReport()
    dst.mkdir(parents=True, exist_ok=True)
    for path in _inputs(src):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's value-validation warnings on input
                ds = pydicom.dcmread(path)
                if str(ds.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
                    report.skipped["DICOMDIR"] += 1
                    continue
                reason = burned_in_reason(ds)
                if reason and not allow_burned_in:
                    report.refused.append((path, f"burned-in risk: {reason}"))
                    continue
                counts = deidentify_dataset(ds, key=key_bytes, shift_dates=shift_dates)
                folder = dst / _out_component(ds.get("StudyInstanceUID"), "no-study")
                folder = folder / _out_component(ds.get("SeriesInstanceUID"), "no-series")
                name = _out_component(ds.get("SOPInstanceUID"), "")
                name = name or "instance-" + _mac(key_bytes, "file", str(path)).hex()[:32]
                out, n = folder / f"{name}.dcm", 1
                while out.exists():  # the same instance twice (e.g. two transfer syntaxes)
                    out, n = folder / f"{name}_{n}.dcm", n + 1
                folder.mkdir(parents=True, exist_ok=True)
                _complete_file_meta(ds)
                tmp = out.with_suffix(".tmp")
                try:
                    ds.save_as(tmp, enforce_file_format=True)
                    os.replace(tmp, out)
                finally:
                    tmp.unlink(missing_ok=True)
        except InvalidDicomError:
            report.skipped["not DICOM"] += 1
            continue
        except DataError as exc:
            report.refused.append((path, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - pydicom raises a dozen types on a bad file
            report.refused.append((path, f"unreadable or unwritable DICOM ({type(exc).__name__})"))
            continue
        report.written.append(out)
        report.counts.update(counts)
    report.log_path = _write_log(dst, report, given_key, shift_dates, allow_burned_in)
    return report


def _write_log(
    dst: Path, report: AnonymizeReport, given_key: bool, shift_dates: bool, allow_burned_in: bool
) -> Path:
    """The run's log: tags, actions and counts only (no input paths, no original values)."""
    reasons = Counter(reason.split(":")[0] for _, reason in report.refused)
    log = {
        "profile": TABLE_SOURCE,
        "table_sha256": TABLE_SHA256,
        "options": {"shift_dates": shift_dates, "allow_burned_in": allow_burned_in},
        "key": "given" if given_key else "random, not saved",
        "files": {
            "written": len(report.written),
            "refused": dict(reasons),
            "skipped": dict(report.skipped),
        },
        "actions": [
            {"tag": tag, "name": name, "action": action, "count": n}
            for (tag, name, action), n in sorted(report.counts.items())
        ],
        "outputs": [str(p.relative_to(dst)) for p in report.written],
    }
    path = dst / LOG_NAME
    path.write_text(json.dumps(log, indent=1) + "\n")
    return path
