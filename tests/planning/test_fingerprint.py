"""Dataset fingerprint: what it records, how the modality is decided, bad input named by scan, cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from unet_med.data.writing import save_nifti
from unet_med.dicom.synthetic import write_dicom_series
from unet_med.planning import FingerprintError, cached_fingerprint, dataset_fingerprint
from unet_med.planning.fingerprint import modality_from_intensities


def test_ct_fingerprint_records_spacing_shapes_labels_and_foreground_statistics(phantom, write_dataset):
    cases = [phantom("ct", seed=s) for s in range(3)]
    manifest = write_dataset("ct", cases, spacing=(0.8, 0.8, 2.5))
    fp = dataset_fingerprint(manifest, progress=False)
    json.dumps(fp)  # plain data
    assert fp["modality"] == "CT" and fp["modality_source"] == "intensity rule"
    assert fp["spatial_dims"] == 3 and fp["channels"] == 1
    assert [r["subject_id"] for r in fp["scans"]] == ["case00", "case01"]  # the train split only
    assert fp["split_counts"] == {"train": 2, "val": 1, "test": 0}
    for rec, (image, label) in zip(fp["scans"], cases):
        assert rec["spacing"] == pytest.approx([0.8, 0.8, 2.5])
        assert rec["shape"] == [24, 24, 12]
        # the crop keeps the body (> -500 HU) and drops the air around it
        body = np.nonzero(image > -500)
        assert rec["cropped_shape"] == [int(i.max() - i.min() + 1) for i in body]
        assert rec["cropped_shape"][0] < 24
        assert rec["label_voxels"] == {str(v): int((label == v).sum()) for v in (0, 1, 2)}
        assert rec["label_volume_ml"]["1"] == pytest.approx((label == 1).sum() * 0.8 * 0.8 * 2.5 / 1000)
    # intensities sampled from labelled voxels only: organ 120 HU and lesion 200 HU, never air or bone
    stats = fp["intensity"]["per_channel"][0]
    labelled = np.concatenate([img[lab > 0] for img, lab in cases[:2]]).astype(float)
    assert stats["n_samples"] == labelled.size
    assert stats["mean"] == pytest.approx(labelled.mean(), rel=1e-6)
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(labelled, 0.5))
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(labelled, 99.5))
    assert 60 < stats["min"] and stats["max"] < 260
    total = sum(int((lab == 1).sum()) for _, lab in cases[:2])
    assert fp["classes"]["1"]["voxels"] == total and fp["classes"]["1"]["scans"] == 2
    assert sum(c["frequency"] for c in fp["classes"].values()) == pytest.approx(1.0)


def test_intensity_sampling_is_bounded_and_seeded(phantom, write_dataset):
    manifest = write_dataset("ct", [phantom("ct", seed=s) for s in range(3)])
    a = dataset_fingerprint(manifest, samples_per_scan=50, seed=3, progress=False)
    b = dataset_fingerprint(manifest, samples_per_scan=50, seed=3, progress=False)
    assert a["intensity"]["per_channel"][0]["n_samples"] == 100
    assert a == b


def test_mr_like_data_is_mr_and_its_crop_is_the_body_not_the_noisy_air(phantom, write_dataset):
    cases = [phantom("mr", seed=s) for s in range(3)]
    manifest = write_dataset("mr", cases, spacing=(1.0, 1.0, 1.0))
    fp = dataset_fingerprint(manifest, progress=False)
    assert fp["modality"] == "MR"
    image = cases[0][0]
    assert (image > 0).all()  # air is non-zero: a non-zero crop would keep everything
    assert fp["scans"][0]["cropped_shape"][0] < 24


def test_modality_rule():
    assert modality_from_intensities(-1024, 700, 0.4) == "CT"
    assert modality_from_intensities(0.0, 300, 0.0) == "MR"
    assert modality_from_intensities(-3.0, 3.0, 0.0) is None  # normalised already
    assert modality_from_intensities(-1024, 150, 0.3) is None  # air but no bright end: undecided


def test_an_undecidable_modality_names_the_scan_and_asks_for_modality(phantom, write_dataset):
    manifest = write_dataset("z", [phantom("normalised", seed=s) for s in range(3)])
    with pytest.raises(FingerprintError, match=r"scan case00 \(.*case00_0000\.nii\.gz\).*--modality"):
        dataset_fingerprint(manifest, progress=False)
    assert dataset_fingerprint(manifest, modality="MR", progress=False)["modality"] == "MR"


def test_scans_of_different_modalities_are_refused_naming_both(phantom, write_dataset):
    manifest = write_dataset("mixed", [phantom("ct", seed=0), phantom("mr", seed=1), phantom("ct", seed=2)])
    with pytest.raises(FingerprintError, match=r"scan case01 .*MR.*scan case00 .*CT"):
        dataset_fingerprint(manifest, progress=False)


def test_modality_precedence_argument_then_dicom_tag_then_sidecar_then_intensities(phantom, tmp_path):
    image, label = phantom("ct", seed=0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    write_dicom_series(image, affine, tmp_path / "dcm" / "s0", modality="MR")  # HU values, MR tag
    save_nifti(label, affine, tmp_path / "lab0.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,image,label,split\ns0,dcm/s0,lab0.nii.gz,train\n")
    (tmp_path / "m.json").write_text(json.dumps({"modality": "CT"}))
    fp = dataset_fingerprint(manifest, progress=False)
    assert fp["modality"] == "MR" and fp["modality_source"] == "DICOM Modality tag"
    assert fp["scans"][0]["dicom_modality"] == "MR"
    assert dataset_fingerprint(manifest, modality="ct", progress=False)["modality"] == "CT"
    with pytest.raises(FingerprintError, match="modality must be one of"):
        dataset_fingerprint(manifest, modality="PET", progress=False)


def test_sidecar_modality_decides_without_dicom(write_dataset):
    import unet_med.data.demo as demo

    rng = np.random.default_rng(0)
    cases = [demo.demo_image_2d(rng, 48) for _ in range(3)]  # HU but no air: the rule is undecided
    with pytest.raises(FingerprintError, match="--modality"):
        dataset_fingerprint(write_dataset("a", cases, spacing=(0.6, 0.6)), progress=False)
    fp = dataset_fingerprint(write_dataset("b", cases, spacing=(0.6, 0.6), modality="CT"), progress=False)
    assert fp["modality"] == "CT" and fp["modality_source"] == "manifest sidecar 'modality'"
    assert fp["spatial_dims"] == 2 and fp["scans"][0]["cropped_shape"] == [48, 48]


def test_scans_disagreeing_in_channels_or_dimensionality_are_named(phantom, write_dataset):
    (a, la), (b, lb) = phantom("ct", seed=0), phantom("ct", seed=1)
    manifest = write_dataset("chan", [(a, la), ([b, b], lb), (a, la)])
    with pytest.raises(FingerprintError, match=r"scan case01 \(.*case01_0000.nii.gz;.*case01_0001.nii.gz\) "
                       r"has channels 2 where the first scan case00 .* has 1"):  # fmt: skip
        dataset_fingerprint(manifest, progress=False)
    flat = (a[:, :, 5], la[:, :, 5])
    manifest = write_dataset("dims", [(a, la), (a, la), flat, (a, la)], spacing=(1.0, 1.0, 1.0))
    with pytest.raises(
        FingerprintError, match=r"scan case02 \(.*case02_0000.nii.gz\) has spatial dimensionality 2"
    ):
        dataset_fingerprint(manifest, progress=False)


def test_label_values_outside_the_declared_classes_name_the_scan(phantom, write_dataset):
    (a, la), (b, lb) = phantom("ct", seed=0), phantom("ct", seed=1)
    lb = lb.copy()
    lb[0, 0, 0] = 5
    manifest = write_dataset("lab", [(a, la), (b, lb), (a, la)], labels={0: "bg", 1: "organ", 2: "lesion"})
    outside = r"scan case01 \(.*\): label values \[5\] are outside the declared classes \[0, 1, 2\]"
    with pytest.raises(FingerprintError, match=outside):
        dataset_fingerprint(manifest, progress=False)
    manifest = write_dataset("lab2", [(a, la), (a, la)])
    with pytest.raises(FingerprintError, match=r"scan case00 .* label values \[2\] are outside"):
        dataset_fingerprint(manifest, num_classes=2, progress=False)


def test_image_and_label_of_different_shapes_name_the_scan(phantom, write_dataset):
    a, la = phantom("ct", seed=0)
    manifest = write_dataset("shape", [(a, la[:, :, :10]), (a, la)])
    with pytest.raises(FingerprintError, match=r"scan case00 .* label .* has shape \(24, 24, 10\)"):
        dataset_fingerprint(manifest, progress=False)


def test_cached_fingerprint_is_reused_until_the_manifest_or_arguments_change(
    phantom, write_dataset, tmp_path, caplog, monkeypatch
):
    import unet_med.planning.fingerprint as fingerprint_module

    manifest = write_dataset("ct", [phantom("ct", seed=s) for s in range(3)])
    cache = tmp_path / "cache"
    calls = []
    real = fingerprint_module.dataset_fingerprint
    monkeypatch.setattr(
        fingerprint_module, "dataset_fingerprint", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    caplog.set_level(logging.INFO, logger="unet_med.planning")
    first = cached_fingerprint(manifest, cache, progress=False)
    assert len(calls) == 1 and (cache / "fingerprint.json").is_file()
    assert "computing" in caplog.text and "no cached fingerprint" in caplog.text
    caplog.clear()
    again = cached_fingerprint(manifest, cache, progress=False)
    assert len(calls) == 1 and again == first
    assert "reusing" in caplog.text and first["manifest_sha256"][:12] in caplog.text
    caplog.clear()
    cached_fingerprint(manifest, cache, modality="MR", progress=False)  # another override: recompute
    assert len(calls) == 2 and "modality_override" in caplog.text
    caplog.clear()
    manifest.write_text(manifest.read_text().replace("case02,", "case02b,"))  # changed manifest bytes
    changed = cached_fingerprint(manifest, cache, modality="MR", progress=False)
    assert len(calls) == 3 and "manifest_sha256" in caplog.text
    assert changed["manifest_sha256"] != first["manifest_sha256"]
    assert json.loads((cache / "fingerprint.json").read_text()) == changed
    assert not [p for p in cache.iterdir() if p.name != "fingerprint.json"]  # no temp files left
