"""DICOM PS3.15 Table E.1-1 as data: its rows parsed into Rules and indexed as a Profile, the
choice of one action per rule, and how the table reads tags and element values.

The table ships as engine/data/resources/confidentiality_profile.json (621 rows from the
innolitics/dicom-standard extraction), checked by SHA-256 on load.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

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

MAX_DEPTH = 64  # sequences nested deeper than this are hostile, not clinical


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


def pick_action(rule: Rule, options: Iterable[str]) -> str:
    """The one action to take for a rule: an applied option's code wins, else the preferred
    alternative of the Basic Profile code."""
    for column in options:
        if column in rule.options:
            return rule.options[column]
    return next(code for code in _PREFERENCE if code in rule.choices)


def tag_text(tag: int) -> str:
    """0x00100010 -> '(0010,0010)', the table's spelling."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def element_values(elem) -> list:
    """The values of a pydicom DataElement as a list ([] when empty)."""
    from pydicom.multival import MultiValue

    v = elem.value
    if v is None or v == "":
        return []
    return list(v) if isinstance(v, MultiValue | list | tuple) else [v]
