"""De-identify DICOM files by the Basic Application Level Confidentiality Profile (DICOM PS3.15
Annex E), and check the result: the public entry point. The work lives in engine/data/deid/
(profile, pseudonyms, actions, checker, gate, folder); this module re-exports its public API.
"""

from __future__ import annotations

from engine.data.deid.actions import PSEUDONYM_TAGS, complete_file_meta, deidentify_dataset
from engine.data.deid.checker import Finding, find_residual_phi
from engine.data.deid.folder import LOG_NAME, AnonymizeReport, anonymize
from engine.data.deid.gate import (
    BURN_IN_MODALITIES,
    BURN_IN_SOP_PREFIXES,
    MEDIA_STORAGE_DIRECTORY,
    burned_in_reason,
)
from engine.data.deid.profile import (
    MAX_DEPTH,
    SHIFT_DATES,
    TABLE_SHA256,
    TABLE_SOURCE,
    Profile,
    Rule,
    load_profile,
    parse_profile,
)
from engine.data.deid.pseudonyms import date_offset_days, is_valid_uid, pseudonym, remap_uid

__all__ = [
    "BURN_IN_MODALITIES",
    "BURN_IN_SOP_PREFIXES",
    "LOG_NAME",
    "MAX_DEPTH",
    "MEDIA_STORAGE_DIRECTORY",
    "PSEUDONYM_TAGS",
    "SHIFT_DATES",
    "TABLE_SHA256",
    "TABLE_SOURCE",
    "AnonymizeReport",
    "Finding",
    "Profile",
    "Rule",
    "anonymize",
    "burned_in_reason",
    "complete_file_meta",
    "date_offset_days",
    "deidentify_dataset",
    "find_residual_phi",
    "is_valid_uid",
    "load_profile",
    "parse_profile",
    "pseudonym",
    "remap_uid",
]
