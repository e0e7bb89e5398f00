"""Loading scans into channel-first ``MetaTensor``s that keep their world geometry.

Everything goes through MONAI's ``LoadImage`` with :class:`ScanReader`, a reader that picks the
library per format: nibabel for NIfTI (as MONAI's ``NibabelReader``), SimpleITK for DICOM series,
single DICOM files and PNG/TIFF. Why our own reader: MONAI's ``ITKReader`` needs the ``itk``
package (not a dependency), ``PydicomReader`` orders slices by its own rules and gives no error
for missing slices, and neither reports which file broke a series. Here DICOM series are grouped
by SeriesInstanceUID, ordered along the slice normal and checked (:mod:`unet_med.dicom.series`)
before SimpleITK reads them (:mod:`unet_med.dicom.reading`), so a broken series raises one
:class:`ScanLoadError` naming it.

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

from unet_med.dicom.reading import read_dicom_series, sitk_image_to_array
from unet_med.dicom.series import DicomSeriesError, series_files

__all__ = ["ScanLoadError", "ScanReader", "load_scan", "load_image", "is_nifti", "is_plain_image"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class ScanLoadError(ValueError):
    """A scan that cannot be loaded; the message names the scan/file and the problem."""


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_plain_image(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


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


def read_plain_image(path: str | Path) -> tuple[np.ndarray, dict]:
    """PNG/TIFF/JPEG with SimpleITK; identity-like affine in pixel units (no patient geometry)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ScanLoadError(
            f"{path}: image file cannot be read ({str(exc).strip().splitlines()[-1]})"
        ) from None
    return sitk_image_to_array(image, world=False)


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
        try:
            return [read_dicom_series(series_files(paths, name), name)]
        except DicomSeriesError as exc:
            raise ScanLoadError(str(exc)) from None

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


def _drop_unusable_nvimgcodec_reader() -> None:
    """Take MONAI's ``NvImgCodecPydicomReader`` off ``LoadImage``'s default readers where
    nvImageCodec (CUDA, ``nvidia-nvimgcodec``, CuPy) is not installed.

    Why: ``LoadImage`` constructs every reader of MONAI's ``SUPPORTED_READERS`` (a registry MONAI
    documents as editable), and this one, without nvImageCodec, logs "nvImageCodec is not
    available" and warns "decoder plugin did not register" on every construction, in every
    process, although it is then never selected (its ``verify_suffix`` is False) and DICOM is
    read by :class:`ScanReader` anyway. Where nvImageCodec is installed nothing changes.
    """
    try:
        from monai.data.nvimgcodec_pydicom_plugin import is_nvimgcodec_available
        from monai.transforms.io.array import SUPPORTED_READERS
    except ImportError:  # a MONAI without the plugin has no such reader
        return
    if not is_nvimgcodec_available():
        SUPPORTED_READERS.pop("nvimgcodecpydicomreader", None)


_drop_unusable_nvimgcodec_reader()


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
