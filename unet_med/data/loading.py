"""Loading scans into channel-first ``MetaTensor``s that keep their world geometry.

Everything goes through MONAI's ``LoadImage`` with :class:`ScanReader`, a reader that picks the
library per format: nibabel for NIfTI (as MONAI's ``NibabelReader``), SimpleITK for DICOM series,
single DICOM files and PNG/TIFF. Why our own reader: MONAI's ``ITKReader`` needs the ``itk``
package (not a dependency), ``PydicomReader`` orders slices by its own rules and gives no error
for missing slices, and neither reports which file broke a series. Here DICOM series are grouped
by SeriesInstanceUID, ordered along the slice normal and checked (:mod:`unet_med.data.dicom`)
before SimpleITK reads them, so a broken series raises one :class:`ScanLoadError` naming it.

Arrays use the NIfTI/ITK index order (i, j, k) = (column, row, slice); ``affine`` is the RAS
voxel-to-world matrix in mm (as ``NibabelReader`` gives), so the same volume stored as NIfTI and
as a DICOM series loads to the same array and the same affine. PNG/TIFF images have no patient
geometry and get an identity affine (pixel units), like MONAI's ``PILReader``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, MetaTensor
from monai.utils import ensure_tuple

from unet_med.data.dicom import (
    DicomSeriesError,
    NotAnImageFile,
    check_series,
    order_series,
    read_slice_header,
)

__all__ = ["ScanLoadError", "ScanReader", "load_scan", "load_image", "is_nifti", "is_plain_image"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class ScanLoadError(ValueError):
    """A scan that cannot be loaded; the message names the scan/file and the problem."""


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_plain_image(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _ras_from_lps(affine: np.ndarray) -> np.ndarray:
    out = affine.copy()
    n = min(2, out.shape[0] - 1)
    out[:n, :] *= -1
    return out


def _sitk_to_array_meta(image: Any, *, world: bool) -> tuple[np.ndarray, dict]:
    """SimpleITK image -> (array in (i, j, k[, c]) order, meta with RAS affine)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    nd = image.GetDimension()
    comps = image.GetNumberOfComponentsPerPixel()
    if comps == 1:
        arr = arr.transpose(tuple(range(nd))[::-1])
    else:
        arr = np.moveaxis(arr.transpose(tuple(range(nd))[::-1] + (nd,)), -1, -1)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if world:
        direction = np.asarray(image.GetDirection(), dtype=float).reshape(nd, nd)
        lps = np.eye(4)
        lps[:nd, :nd] = direction @ np.diag(spacing)
        lps[:nd, 3] = image.GetOrigin()
        affine = _ras_from_lps(lps)
    else:
        affine = np.eye(4)
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


def _squeeze_to_3d(arr: np.ndarray, spatial_shape: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3:
        raise ScanLoadError(
            f"{name}: {arr.ndim}D NIfTI of shape {tuple(arr.shape)} where a 2D or 3D volume is expected "
            "(store channels or time points as separate files)"
        )
    while arr.ndim == 3 and arr.shape[-1] == 1 and len(spatial_shape) == 3 and spatial_shape[-1] == 1:
        arr, spatial_shape = arr[..., 0], spatial_shape[:2]
    return arr, np.asarray(spatial_shape[: arr.ndim])


def read_nifti(path: str | Path) -> tuple[np.ndarray, dict]:
    """Load one NIfTI with nibabel: (array, meta with RAS affine); :class:`ScanLoadError` on failure."""
    import nibabel as nib

    name = str(path)
    try:
        img = nib.load(name)
    except FileNotFoundError:
        raise ScanLoadError(f"{name}: file not found") from None
    except Exception as exc:
        raise ScanLoadError(f"{name}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated files: EOFError, ValueError, zlib/gzip errors
        raise ScanLoadError(
            f"{name}: truncated or corrupt NIfTI, the voxel data cannot be read "
            f"(header says shape {tuple(img.shape)}; {type(exc).__name__}: {exc})"
        ) from None
    affine = np.array(img.affine, dtype=float)
    shape = np.asarray(img.shape[:3])
    arr, shape = _squeeze_to_3d(arr, shape, name)
    zooms = np.asarray(img.header.get_zooms()[: arr.ndim], dtype=float)
    meta = {
        "affine": affine,
        "original_affine": affine.copy(),
        "spatial_shape": shape,
        "spacing": zooms,
        "pixdim": np.asarray(img.header["pixdim"], dtype=float),
        "space": "RAS",
        "original_channel_dim": float("nan"),
    }
    return arr, meta


def dicom_series_files(paths: Sequence[str | Path], name: str | None = None) -> list[Path]:
    """Files of exactly one DICOM image series, ordered along the slice normal and checked.

    ``paths`` may be a folder (searched recursively) or a list of files.

    Raises:
        ScanLoadError: no DICOM images, several series, or an irregular series (missing slices,
            inconsistent spacing, mixed sizes), naming ``name`` (default: the first path).
    """
    name = name or str(paths[0])
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.exists():
            files.append(p)
        else:
            raise ScanLoadError(f"{name}: file not found: {p}")
    headers, reasons = [], []
    for f in files:
        try:
            headers.append(read_slice_header(f))
        except NotAnImageFile as exc:
            reasons.append(f"{f.name}: {exc}")
    if not headers:
        detail = f" ({'; '.join(reasons[:3])})" if reasons else " (empty)"
        raise ScanLoadError(f"{name}: no DICOM image files{detail}")
    uids = sorted({h.series_uid for h in headers})
    if len(uids) > 1:
        raise ScanLoadError(
            f"{name}: holds {len(uids)} DICOM series; pass the files of one series "
            "(`unet-med scans` lists them separately)"
        )
    try:
        ordered = order_series(headers)
        check_series(ordered, name)
    except DicomSeriesError as exc:
        raise ScanLoadError(str(exc)) from None
    return [h.path for h in ordered]


def read_dicom_series(files: Sequence[Path], name: str) -> tuple[np.ndarray, dict]:
    """Read ordered, checked DICOM files with SimpleITK (rescale slope/intercept applied)."""
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
        raise ScanLoadError(f"{name}: DICOM pixel data cannot be read ({first})") from None
    arr, meta = _sitk_to_array_meta(image, world=True)
    if arr.ndim == 3 and arr.shape[2] == 1:  # single-slice DICOM is a 2D image placed in 3D space
        arr = arr[:, :, 0]
        meta["spatial_shape"] = meta["spatial_shape"][:2]
        meta["spacing"] = meta["spacing"][:2]
    return arr, meta


def read_plain_image(path: str | Path) -> tuple[np.ndarray, dict]:
    """PNG/TIFF/JPEG with SimpleITK; identity-like affine in pixel units (no patient geometry)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ScanLoadError(
            f"{path}: image file cannot be read ({str(exc).strip().splitlines()[-1]})"
        ) from None
    return _sitk_to_array_meta(image, world=False)


class ScanReader(ImageReader):
    """MONAI reader for NIfTI files, DICOM series (a folder or a list of slice files), single DICOM
    files and PNG/TIFF images; use as ``LoadImage(d)(reader=ScanReader())``.

    A list of NIfTI or image files is stacked as channels (e.g. nnU-Net's ``_0000``, ``_0001``);
    a list of DICOM files is one series. Errors are :class:`ScanLoadError` naming the file.
    """

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        return True  # every input this project handles; format is decided in read()

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> list[tuple[np.ndarray, dict]]:
        paths = [Path(p) for p in ensure_tuple(data)]
        if not paths:
            raise ScanLoadError("no file given")
        if all(is_nifti(p) for p in paths):
            return [read_nifti(p) for p in paths]
        if all(is_plain_image(p) for p in paths):
            return [read_plain_image(p) for p in paths]
        if any(is_nifti(p) or is_plain_image(p) for p in paths):
            raise ScanLoadError(
                f"{paths[0]}: a mix of NIfTI/image files and other files cannot form one scan"
            )
        name = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent} ({len(paths)} files)"
        return [read_dicom_series(dicom_series_files(paths, name), name)]

    def get_data(self, img: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
        arrays = [a for a, _ in img]
        meta = dict(img[0][1])
        if len(arrays) == 1:
            return arrays[0], meta
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ScanLoadError(
                f"channel files have different shapes {sorted(shapes)}; they cannot be stacked"
            )
        meta["original_channel_dim"] = 0
        return np.stack(arrays, axis=0), meta


@functools.lru_cache(maxsize=8)
def _loader(dtype: Any) -> Any:
    # LoadImage instantiates all of MONAI's default readers on construction; build it once per dtype.
    from monai.transforms import LoadImage

    return LoadImage(image_only=True, ensure_channel_first=True, dtype=dtype)


def load_image(path: str | Path | Sequence[str | Path], *, dtype: Any = np.float32) -> MetaTensor:
    """Load a NIfTI file, DICOM series (folder or file list) or image as a channel-first MetaTensor.

    ``dtype=None`` keeps the stored type (e.g. int16 HU).
    """
    return _loader(dtype)(path, reader=ScanReader())


def load_scan(scan: Any, *, dtype: Any = np.float32) -> MetaTensor:
    """Load a discovered :class:`~unet_med.data.discovery.Scan` as a channel-first MetaTensor.

    The result carries ``affine`` (RAS, mm) and ``spacing`` in its meta, plus ``scan_id``.

    Raises:
        ScanLoadError: naming the scan id and the problem (corrupt file, broken series, ...).
    """
    source = list(scan.files) if scan.kind == "dicom" else scan.files[0]
    try:
        img = load_image(source, dtype=dtype)
    except ScanLoadError as exc:
        raise ScanLoadError(f"scan {scan.scan_id}: {exc}") from None
    img.meta["scan_id"] = scan.scan_id
    return img
