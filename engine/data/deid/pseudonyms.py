"""Keyed pseudonyms: UIDs, patient IDs and date offsets from HMAC-SHA256 with a secret key, and
the UID syntax and kinds the de-identifier and checker both need."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def keyed_digest(key: bytes, purpose: str, text: str) -> bytes:
    """HMAC-SHA256(key, purpose NUL text): 32 bytes; `purpose` keeps the uses apart."""
    return hmac.new(key, f"{purpose}\0{text}".encode(), hashlib.sha256).digest()


def remap_uid(uid: str, key: bytes) -> str:
    """A UID -> '2.25.<decimal of a UUID>' from HMAC-SHA256(key, uid): the same key maps the same
    UID to the same value in every file; without the key the original cannot be recovered or
    linked. Never uses pydicom.generate_uid(prefix=None), which is random."""
    digest = keyed_digest(key, "uid", uid.strip("\0 "))[:16]
    return f"2.25.{uuid.UUID(bytes=digest, version=4).int}"


def pseudonym(patient_id: str, key: bytes) -> str:
    """A keyed patient pseudonym ('ANON-' + 12 hex digits), stable per patient and key."""
    return "ANON-" + keyed_digest(key, "patient", patient_id).hex()[:12].upper()


def date_offset_days(patient_id: str, key: bytes) -> int:
    """Per-patient date shift in days, in [-3650, -1]: secret without the key, same for every file
    of the patient, so intervals between that patient's dates are kept exactly."""
    return -1 - int.from_bytes(keyed_digest(key, "dates", patient_id)[:8], "big") % 3650


def is_valid_uid(text: str) -> bool:
    """UID syntax of PS3.5 9.1: digits and dots, no empty or leading-zero component, <= 64 chars."""
    return 0 < len(text) <= 64 and bool(_UID_RE.match(text))


def is_standard_uid(keyword: str, value: str) -> bool:
    """Class and transfer-syntax UIDs name what a file is, not who it is about: they are kept."""
    from pydicom.uid import UID_dictionary

    return keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID" or value in UID_dictionary
