"""unet-med: U-Net segmentation of CT, MR and microscopy images on MONAI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("unet-med")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
