"""Data: scan discovery, loading (NIfTI, DICOM series, PNG/TIFF), manifests and their validation,
demo data, datasets. DICOM itself (series, reading, SEG) lives in :mod:`unet_med.dicom`."""

from unet_med.data.converters import manifest_from_decathlon, manifest_from_nnunet
from unet_med.data.datasets import make_dataset
from unet_med.data.demo import generate_demo_dataset
from unet_med.data.discovery import Scan, ScanDiscovery, SkipKind, SkippedFile, discover_scans
from unet_med.data.loading import ScanLoadError, ScanReader, load_image, load_scan
from unet_med.data.manifest import (
    ManifestError,
    manifest_datalist,
    manifest_labels,
    manifest_sha256,
    read_manifest,
)
from unet_med.data.validation import ManifestProblem, ManifestReport, validate_manifest

__all__ = [
    "ManifestError",
    "ManifestProblem",
    "ManifestReport",
    "Scan",
    "ScanDiscovery",
    "SkipKind",
    "SkippedFile",
    "discover_scans",
    "manifest_from_decathlon",
    "manifest_from_nnunet",
    "validate_manifest",
    "ScanLoadError",
    "ScanReader",
    "generate_demo_dataset",
    "load_image",
    "load_scan",
    "make_dataset",
    "manifest_datalist",
    "manifest_labels",
    "manifest_sha256",
    "read_manifest",
]
