"""DICOM SEG objects: one segment per foreground label, frames in the source series' slice order,
the source series referenced, a label map that does not fit the series refused."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from unet_med.dicom.seg import write_dicom_seg
from unet_med.dicom.series import series_files
from unet_med.dicom.synthetic import write_dicom_series


def test_seg_segments_frames_and_reference(tmp_path, random_volume, oblique_affine):
    write_dicom_series(random_volume((12, 10, 4), 1), oblique_affine, tmp_path / "ct", series_uid="1.2.3.4")
    labels = np.zeros((12, 10, 4), np.uint8)
    labels[2:5, 3:6, 1] = 1
    labels[8, 8, 3] = 2
    files = series_files([tmp_path / "ct"])
    path = write_dicom_seg(labels, files, {0: "background", 1: "liver", 2: "tumour"}, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
    frames = seg.pixel_array  # (segments x slices, rows, columns)
    assert frames.shape == (2 * 4, 10, 12)
    # each frame names its segment and the slice position it lies at (highdicom orders frames itself)
    where = {
        (
            int(g.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
            float(g.PlanePositionSequence[0].ImagePositionPatient[2]),
        ): k
        for k, g in enumerate(seg.PerFrameFunctionalGroupsSequence)
    }
    z = [40.0 + 2.5 * k for k in range(4)]  # the series' slice positions along z (mm)
    assert int(frames[where[1, z[1]]].sum()) == 9 and int(frames[[where[1, p] for p in z]].sum()) == 9
    assert frames[where[2, z[3]], 8, 8] == 1 and int(frames[[where[2, p] for p in z]].sum()) == 1
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically
    with pytest.raises(ValueError, match=r"does not match the series \(12 columns x 10 rows x 4 slices\)"):
        write_dicom_seg(labels[:, :, :3], files, {0: "background", 1: "liver"}, tmp_path / "bad.dcm")
