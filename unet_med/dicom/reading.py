"""Reading DICOM pixel data: an ordered, checked series (or one file) -> array + RAS affine.

SimpleITK reads the pixel data (rescale slope and intercept applied) of the files in the order
:func:`unet_med.dicom.series.series_files` gives. Arrays come out in the NIfTI/ITK index order
(i, j, k) = (column, row, slice) and the affine is the RAS voxel-to-world matrix in mm (DICOM's
LPS patient coordinates with the first two axes flipped), so a volume stored as NIfTI and as a
DICOM series loads to the same array and affine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.utils import orientation_ras_lps

from unet_med.dicom.series import DicomSeriesError

__all__ = ["read_dicom_series", "sitk_image_to_array"]


def sitk_image_to_array(image: Any, *, world: bool) -> tuple[np.ndarray, dict]:
    """A SimpleITK image as (array in (i, j, k[, c]) order, meta with a 4x4 RAS ``affine`` in mm).

    Args:
        image: a ``SimpleITK.Image`` (DICOM, or a PNG/TIFF that SimpleITK read the same way).
        world: use the image's origin and direction (LPS patient geometry); ``False`` gives a
            diagonal affine of the pixel spacing (plain images have no patient geometry).
    """
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)  # SimpleITK's order is (k, j, i[, c])
    nd = image.GetDimension()
    comps = image.GetNumberOfComponentsPerPixel()
    axes = tuple(range(nd))[::-1]
    arr = arr.transpose(axes if comps == 1 else axes + (nd,))
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    affine = np.eye(4)
    if world:
        direction = np.asarray(image.GetDirection(), dtype=float).reshape(nd, nd)
        affine[:nd, :nd] = direction @ np.diag(spacing)
        affine[:nd, 3] = image.GetOrigin()
        affine = orientation_ras_lps(affine)  # LPS -> RAS
    else:
        affine[:nd, :nd] = np.diag(spacing)
    meta = {
        "affine": affine,
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(image.GetSize()),
        "spacing": spacing,
        "space": "RAS",
        "original_channel_dim": float("nan") if comps == 1 else -1,
    }
    return arr, meta


def read_dicom_series(files: Sequence[Path], name: str) -> tuple[np.ndarray, dict]:
    """Read ordered, checked DICOM files (:func:`~unet_med.dicom.series.series_files`) with
    SimpleITK: (array, meta with RAS affine). A single-slice series is a 2D image placed in 3D space.

    Raises:
        DicomSeriesError: naming ``name`` when SimpleITK cannot read the pixel data.
    """
    import SimpleITK as sitk

    try:
        if len(files) == 1:
            image = sitk.ReadImage(str(files[0]))
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(f) for f in files])
            image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DicomSeriesError(f"{name}: DICOM pixel data cannot be read ({first})") from None
    arr, meta = sitk_image_to_array(image, world=True)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
        meta["spatial_shape"] = meta["spatial_shape"][:2]
        meta["spacing"] = meta["spacing"][:2]
    return arr, meta
