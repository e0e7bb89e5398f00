"""Series selection rules: which discovered series (and files) a batch segments, and why not the others.

A PACS team writes rules such as ``Modality==CT``, ``slices>=20``, ``SliceThickness<=5``,
``orientation==axial`` or ``SeriesDescription~/(?i)axial/``; a scan is selected when *every* rule
holds, otherwise the first failing rule is its reason (``not selected: slices>=20 (found 3)``).

Rule syntax: ``NAME OP VALUE`` (spaces around the operator allowed).

- ``NAME``: a derived property of every scan, lower case: ``kind`` (nifti|dicom|image),
  ``slices`` (number of slices), ``orientation`` (axial|coronal|sagittal|oblique|mixed, from the
  slice normal), ``slice_spacing`` (mm between slice centres), ``pixel_spacing`` (mm, both in-plane
  spacings must satisfy the rule); or a DICOM attribute of the series by its keyword
  (:data:`DICOM_ATTRIBUTES`: ``Modality``, ``BodyPartExamined``, ``SeriesDescription``,
  ``ImageType``, ``SliceThickness``, ...). Patient-identifying attributes cannot be used.
- ``OP``: ``==`` / ``!=`` (text: case-insensitive, several alternatives separated by commas;
  for a multi-valued attribute such as ImageType ``==`` means "one of its values is", ``!=`` "none
  of its values is"), ``<``, ``<=``, ``>``, ``>=`` (numbers), ``~`` / ``!~`` (a Python regular
  expression searched in the text, optionally written between slashes: ``~/(?i)axial/``).
- A value a scan does not have (a NIfTI file has no DICOM header, a series without
  BodyPartExamined) satisfies only ``!=`` and ``!~``.

Decisions never echo free-text attributes (SeriesDescription, ProtocolName, StudyDescription),
which DICOM de-identification removes because they may hold names; other values are shown.

This is the project's own small grammar rather than a general expression language (no eval, no
new dependency): a rule is one comparison, so a wrong one is reported at its character position.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DERIVED_PROPERTIES",
    "DICOM_ATTRIBUTES",
    "SELECTION_FILE",
    "SelectionRule",
    "SelectionRuleError",
    "SeriesSelection",
    "bundle_selection",
    "load_selection_file",
    "parse_rule",
    "parse_rules",
    "plane_of_normal",
]

SELECTION_FILE = "configs/series_selection.json"  # a bundle's default rules, relative to the bundle
# Derived properties, every scan: name -> "number" or "text".
DERIVED_PROPERTIES = {
    "kind": "text",
    "slices": "number",
    "orientation": "text",
    "slice_spacing": "number",
    "pixel_spacing": "number",
}
# DICOM attributes rules may use (none identifies a patient), read from each slice's header.
DICOM_ATTRIBUTES = {
    "Modality": "text",
    "BodyPartExamined": "text",
    "SeriesDescription": "text",
    "ProtocolName": "text",
    "StudyDescription": "text",
    "ImageType": "text",
    "SliceThickness": "number",
    "SpacingBetweenSlices": "number",
    "SeriesNumber": "number",
    "Manufacturer": "text",
    "ManufacturerModelName": "text",
    "ConvolutionKernel": "text",
    "ContrastBolusAgent": "text",
    "ScanningSequence": "text",
    "SequenceName": "text",
    "MagneticFieldStrength": "number",
    "KVP": "number",
    "PhotometricInterpretation": "text",
}
_FREE_TEXT = frozenset({"SeriesDescription", "ProtocolName", "StudyDescription"})
_PATIENT_TAGS = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "PatientAddress", "OtherPatientIDs", "OtherPatientNames", "AccessionNumber", "StudyID",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "InstitutionName",
    "InstitutionAddress", "StudyDate", "StudyTime", "SeriesDate", "AcquisitionDate", "ContentDate",
})  # fmt: skip
ORIENTATIONS = ("axial", "coronal", "sagittal", "oblique", "mixed")
KINDS = ("nifti", "dicom", "image")
# A slice normal further than this from every patient axis is "oblique" (degrees).
OBLIQUE_DEGREES = 30.0
_OPERATORS = ("==", "!=", "<=", ">=", "!~", "<", ">", "~")  # longest first
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")


class SelectionRuleError(ValueError):
    """A rule that does not parse; the message names the rule, its position and the character."""


def plane_of_normal(normal: Sequence[float] | None) -> str | None:
    """``axial``, ``coronal`` or ``sagittal``: the patient plane nearest to slices with this normal
    (any right-handed patient frame, LPS or RAS); ``oblique`` when the normal is more than
    :data:`OBLIQUE_DEGREES` from every patient axis; None without a normal."""
    if normal is None:
        return None
    n = np.abs(np.asarray(normal, dtype=float))
    if not np.isfinite(n).all() or n.sum() == 0:
        return None
    n = n / np.linalg.norm(n)
    axis = int(np.argmax(n))
    if math.degrees(math.acos(min(1.0, float(n[axis])))) > OBLIQUE_DEGREES:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class SelectionRule:
    """One parsed rule: ``name op value`` (``text`` as the user wrote it)."""

    text: str
    name: str
    op: str
    values: tuple[Any, ...]  # numbers, lower-case texts or one compiled pattern

    def failure(self, properties: Mapping[str, Any]) -> str | None:
        """None when the rule holds for a scan with these ``properties``, else the reason
        (``slices>=20 (found 3)``). A property may be a number, a text, a tuple of them or None."""
        value = properties.get(self.name)
        items = [] if value is None else list(value) if isinstance(value, (tuple, list)) else [value]
        if self.op in ("!=", "!~") and not items:
            return None
        if not items:
            why = "a NIfTI file or image has no DICOM header" if self.name in DICOM_ATTRIBUTES and \
                properties.get("kind") in ("nifti", "image") else "not present"
            return f"{self.text} ({self.name}: {why})"
        if self.op in ("==", "!="):
            hit = any(_equal(v, w) for v in items for w in self.values)
            ok = hit if self.op == "==" else not hit
        elif self.op in ("~", "!~"):
            hit = any(self.values[0].search(str(v)) for v in items)
            ok = hit if self.op == "~" else not hit
        else:
            try:
                numbers = [float(v) for v in items]
            except (TypeError, ValueError):
                return f"{self.text} ({self.name} is not a number)"
            ok = all(_compare(x, self.op, self.values[0]) for x in numbers)
        if ok:
            return None
        if self.name in _FREE_TEXT:
            return self.text
        shown = "\\".join(_show(v) for v in items)
        return f"{self.text} (found {shown})"


def _equal(found: Any, wanted: Any) -> bool:
    if isinstance(wanted, float):
        try:
            return abs(float(found) - wanted) <= 1e-6 * max(1.0, abs(wanted))
        except (TypeError, ValueError):
            return False
    return str(found).strip().lower() == wanted


def _compare(x: float, op: str, y: float) -> bool:
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass(frozen=True)
class SeriesSelection:
    """Rules that must all hold; ``origin`` says where they came from (``--select``, a file)."""

    rules: tuple[SelectionRule, ...]
    origin: str = "--select"

    def decide(self, properties: Mapping[str, Any], unknown: Iterable[str] = ()) -> str:
        """``selected``, or ``not selected: <first failing rule> (found ...)``. Rules on a name in
        ``unknown`` (e.g. ``slice_spacing`` of a series whose geometry is broken) are not judged."""
        skip = set(unknown)
        for rule in self.rules:
            if rule.name in skip:
                continue
            reason = rule.failure(properties)
            if reason is not None:
                return f"not selected: {reason}"
        return "selected"

    def describe(self) -> str:
        """The rules as one line: ``slices>=8; ImageType!=LOCALIZER``."""
        return "; ".join(r.text for r in self.rules) or "(no rules)"


def parse_rule(text: str, position: int = 1, origin: str = "--select") -> SelectionRule:
    """Parse one rule (see the module docstring for the syntax).

    Args:
        text: the rule, e.g. ``"slices>=20"``.
        position: its number among the rules (1-based), for error messages.
        origin: where it came from (``--select``, a file name), for error messages.

    Raises:
        SelectionRuleError: naming the rule's position, the character and what was expected.
    """
    where = f"{origin} rule {position} {text!r}"
    match = _NAME.match(text)
    if not match:
        raise SelectionRuleError(f"{where}: expected a property name at character 1, e.g. slices>=20")
    name = match.group(1)
    if name in _PATIENT_TAGS:
        raise SelectionRuleError(f"{where}: {name} identifies a patient; rules cannot use it")
    kind = DERIVED_PROPERTIES.get(name) or DICOM_ATTRIBUTES.get(name)
    if kind is None:
        raise SelectionRuleError(
            f"{where}: unknown name {name!r} at character {match.start(1) + 1}; expected one of "
            f"{', '.join(DERIVED_PROPERTIES)} or a DICOM attribute: {', '.join(DICOM_ATTRIBUTES)}"
        )
    at = match.end()
    op = next((o for o in _OPERATORS if text.startswith(o, at)), None)
    if op is None:
        raise SelectionRuleError(
            f"{where}: expected an operator (==, !=, <, <=, >, >=, ~, !~) at character {at + 1}, "
            f"found {text[at:at + 2]!r}"
        )
    raw = text[at + len(op):]
    value_at = at + len(op) + len(raw) - len(raw.lstrip()) + 1  # 1-based character of the value
    raw = raw.strip()
    if not raw:
        raise SelectionRuleError(f"{where}: expected a value after {op!r} at character {value_at}")
    values: tuple[Any, ...]
    if op in ("~", "!~"):
        pattern = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == "/" else raw
        offset = 1 if pattern is not raw else 0
        try:
            values = (re.compile(pattern),)
        except re.error as exc:
            col = value_at + offset + (exc.pos or 0)
            raise SelectionRuleError(
                f"{where}: bad regular expression at character {col}: {exc.msg}"
            ) from None
    elif op in ("<", "<=", ">", ">="):
        if kind != "number":
            raise SelectionRuleError(f"{where}: {op!r} compares numbers, but {name} is text (use == or ~)")
        try:
            values = (float(raw),)
        except ValueError:
            raise SelectionRuleError(
                f"{where}: expected a number at character {value_at}, found {raw!r}"
            ) from None
    else:
        parts = [p.strip() for p in raw.split(",")]
        if any(not p for p in parts):
            raise SelectionRuleError(f"{where}: empty alternative in {raw!r} at character {value_at}")
        if kind == "number":
            try:
                values = tuple(float(p) for p in parts)
            except ValueError:
                raise SelectionRuleError(
                    f"{where}: expected numbers at character {value_at}, found {raw!r}"
                ) from None
        else:
            values = tuple(p.lower() for p in parts)
            allowed = {"orientation": ORIENTATIONS, "kind": KINDS}.get(name)
            wrong = [p for p in values if allowed and p not in allowed]
            if wrong:
                raise SelectionRuleError(
                    f"{where}: {name} is one of {', '.join(allowed)}, found {wrong[0]!r} "
                    f"at character {value_at}"
                )
    return SelectionRule(text=text.strip(), name=name, op=op, values=values)


def parse_rules(texts: Sequence[str], origin: str = "--select") -> SeriesSelection:
    """All ``texts`` as one selection (every rule must hold).

    Raises:
        SelectionRuleError: the first rule that does not parse, by its position.
    """
    return SeriesSelection(tuple(parse_rule(t, i, origin) for i, t in enumerate(texts, 1)), origin)


def load_selection_file(path: str | Path) -> SeriesSelection:
    """Rules from a JSON file ``{"rules": ["slices>=8", ...]}`` (other keys, e.g. ``"why"``, are
    comments).

    Raises:
        SelectionRuleError: not JSON, no ``rules`` list of strings, or a rule that does not parse.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SelectionRuleError(f"{path}: not a readable JSON file ({exc})") from None
    rules = doc.get("rules") if isinstance(doc, dict) else None
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise SelectionRuleError(f'{path}: expected {{"rules": ["NAME OP VALUE", ...]}}')
    return parse_rules(rules, origin=str(path))


def bundle_selection(bundle_dir: str | Path) -> SeriesSelection | None:
    """The bundle's default rules (``configs/series_selection.json``), None when it has none.

    Raises:
        SelectionRuleError: the file exists but does not parse.
    """
    path = Path(bundle_dir) / SELECTION_FILE
    return load_selection_file(path) if path.is_file() else None
