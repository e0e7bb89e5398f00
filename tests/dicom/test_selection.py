"""Series selection rules: the grammar a PACS team writes, the decision per scan and its reason,
errors that name the rule's position, no patient tags and no free text echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unet_med.dicom.selection import (
    SelectionRuleError,
    bundle_selection,
    load_selection_file,
    parse_rule,
    parse_rules,
    plane_of_normal,
)

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
CT_AXIAL = {
    "kind": "dicom",
    "Modality": "CT",
    "slices": 40,
    "SliceThickness": 2.5,
    "orientation": "axial",
    "pixel_spacing": (0.7, 0.7),
    "slice_spacing": 2.5,
    "ImageType": ("ORIGINAL", "PRIMARY", "AXIAL"),
    "SeriesDescription": "Thorax 2.5 mm Axial Doe^Jane",
    "BodyPartExamined": None,
}


def test_every_rule_must_hold_and_the_first_failing_one_is_the_reason():
    rules = parse_rules(["Modality==CT", "slices>=20", "SliceThickness<=5", "orientation==axial",
                         "SeriesDescription~/(?i)axial/"])  # fmt: skip
    assert rules.decide(CT_AXIAL) == "selected"
    assert rules.decide({**CT_AXIAL, "slices": 3}) == "not selected: slices>=20 (found 3)"
    assert rules.decide({**CT_AXIAL, "Modality": "MR"}) == "not selected: Modality==CT (found MR)"
    assert rules.decide({**CT_AXIAL, "orientation": "coronal"}).endswith("(found coronal)")
    # free text (may hold names) is never echoed
    loc = rules.decide({**CT_AXIAL, "SeriesDescription": "LOCALIZER Doe^Jane"})
    assert loc == "not selected: SeriesDescription~/(?i)axial/" and "Doe" not in loc


def test_operators_on_multi_valued_numbers_alternatives_and_missing_values():
    assert parse_rule("ImageType!=LOCALIZER").failure(CT_AXIAL) is None
    assert "found ORIGINAL\\PRIMARY\\LOCALIZER" in parse_rule("ImageType != localizer").failure(
        {"ImageType": ("ORIGINAL", "PRIMARY", "LOCALIZER")}
    )
    assert parse_rule("Modality==mr, ct").failure(CT_AXIAL) is None  # alternatives, any case
    assert parse_rule("pixel_spacing<=0.8").failure(CT_AXIAL) is None
    assert parse_rule("pixel_spacing>=0.75").failure(CT_AXIAL) == "pixel_spacing>=0.75 (found 0.7\\0.7)"
    # a value the scan lacks satisfies only != and !~
    assert parse_rule("BodyPartExamined!=HEAD").failure(CT_AXIAL) is None
    assert "not present" in parse_rule("BodyPartExamined==CHEST").failure(CT_AXIAL)
    nifti = {"kind": "nifti", "slices": 9, "orientation": "axial"}
    assert "no DICOM header" in parse_rule("Modality==CT").failure(nifti)
    assert parse_rule("ImageType!=LOCALIZER").failure(nifti) is None
    # a rule on a property that a broken series cannot give is left to the geometry check
    broken = parse_rules(["slice_spacing<=3"]).decide({"kind": "dicom"}, unknown=["slice_spacing"])
    assert broken == "selected"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("slices=>20", "rule 2 'slices=>20': expected an operator (==, !=, <, <=, >, >=, ~, !~) at "
         "character 7"),
        ("slices>=twenty", "rule 2 'slices>=twenty': expected a number at character 9"),
        ("Slices>=20", "unknown name 'Slices' at character 1"),
        ("Modality<CT", "compares numbers, but Modality is text"),
        ("orientation==axail", "orientation is one of axial, coronal, sagittal, oblique, mixed, found "
         "'axail'"),
        ("SeriesDescription~/(axial/", "bad regular expression at character 20"),
        ("PatientName~Doe", "PatientName identifies a patient"),
        ("slices>=", "expected a value after '>=' at character 9"),
        ("==CT", "expected a property name at character 1"),
    ],
)
def test_a_rule_that_does_not_parse_names_its_position(rule, message):
    with pytest.raises(SelectionRuleError) as info:
        parse_rules(["Modality==CT", rule])
    assert message in str(info.value)


def test_plane_of_the_slice_normal():
    assert plane_of_normal((0, 0, 1)) == "axial"
    assert plane_of_normal((0, -1, 0.2)) == "coronal"
    assert plane_of_normal((1, 0, 0)) == "sagittal"
    assert plane_of_normal((1, 1, 0)) == "oblique"  # 45 degrees from both axes
    assert plane_of_normal(None) is None


def test_selection_files_and_the_bundles_defaults(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"why": "CT only", "rules": ["Modality==CT", "slices>=20"]}))
    assert load_selection_file(path).describe() == "Modality==CT; slices>=20"
    path.write_text(json.dumps({"rules": ["Modality==CT", "slices=>20"]}))
    with pytest.raises(SelectionRuleError, match=r"rules.json rule 2 'slices=>20'.*character 7"):
        load_selection_file(path)
    path.write_text(json.dumps(["slices>=20"]))
    with pytest.raises(SelectionRuleError, match="expected"):
        load_selection_file(path)
    localizer = {"kind": "dicom", "slices": 3, "orientation": "mixed", "ImageType": ("ORIGINAL", "PRIMARY")}
    for bundle in (BUNDLES / "unet3d", BUNDLES / "unet2d_paper"):
        rules = bundle_selection(bundle)
        assert rules.decide({**CT_AXIAL, "SeriesDescription": "Abdomen"}) == "selected"
        assert "orientation!=mixed" in rules.decide(localizer)
        assert "SeriesDescription" in rules.decide({**CT_AXIAL, "SeriesDescription": "Scout"})
        us = {**CT_AXIAL, "SeriesDescription": "Abdomen", "PhotometricInterpretation": "RGB"}
        colour = rules.decide(us)
        assert colour.endswith("(found RGB)")
        assert rules.decide({"kind": "nifti", "slices": 20, "orientation": "axial"}) == "selected"
    short = {**localizer, "orientation": "axial"}
    assert "slices>=8 (found 3)" in bundle_selection(BUNDLES / "unet3d").decide(short)
    assert bundle_selection(tmp_path) is None
