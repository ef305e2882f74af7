"""The residual-PHI checker: finds whatever Table E.1-1's Basic Profile says must be removed or
replaced but is still in a (de-identified) dataset. It shares only the table with the
de-identifier, never its code paths, so it checks rather than repeats it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.data.deid.profile import MAX_DEPTH, Rule, element_values, load_profile, tag_text
from engine.data.deid.pseudonyms import is_standard_uid, is_valid_uid


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
            out.update(
                str(v) for v in element_values(elem) if not is_standard_uid(elem.keyword, str(v))
            )
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
    return bool(element_values(b)) and element_values(a) == element_values(b)


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
            where = path + tag_text(tag)
            before = None
            if orig is not None:
                meta = getattr(orig, "file_meta", None) if tag >> 16 == 2 and depth == 0 else orig
                before = meta.get(tag) if meta is not None else None
            rule = profile.rule_for(tag)
            if tag >> 16 in range(0x6000, 0x601F, 2) and rule is None:
                rule = Rule("(60XX,XXXX)", "Overlay group", "X")
            if rule is None:
                values = [str(v) for v in element_values(elem)] if elem.VR == "UI" else []
                if any(v in originals and not is_standard_uid(elem.keyword, v) for v in values):
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
    empty = not element_values(elem) if elem.VR != "SQ" else not elem.value
    changed = before is None or not _same(elem, before)
    if "U*" in choices or "K" in choices:
        return ""
    if "C" in choices and (elem.VR == "TM" or changed):
        return ""
    if "Z" in choices and (empty or changed):
        return ""
    if "D" in choices and changed:
        if elem.VR != "UI" or all(str(v) not in originals for v in element_values(elem)):
            return ""
    if "U" in choices:
        values = [str(v) for v in element_values(elem)]
        if not all(is_valid_uid(v) for v in values):
            return "not a valid UID"
        if any(v in originals for v in values):
            return "original UID kept"
        return ""
    return "present" if choices == {"X"} else "unchanged"
