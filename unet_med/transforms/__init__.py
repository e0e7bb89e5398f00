"""MONAI transforms of unet-med, one module per job; every public name is re-exported here, so
bundles keep ``{"_target_": "unet_med.transforms.training_transforms", ...}``.

- :mod:`~unet_med.transforms.chains`: the ``Compose`` chains a bundle builds (preprocessing,
  training with valid-convolution patch pairs, inference, inversion of predictions) and
  :func:`valid_patch_margin`;
- :mod:`~unet_med.transforms.weight_map`: the paper's border weight map;
- :mod:`~unet_med.transforms.elastic`: the paper's coarse-grid elastic deformation;
- :mod:`~unet_med.transforms.intensity`: intensity normalisation (CT window, dataset CT scheme,
  body-foreground z-score), the Otsu body mask and the foreground selectors.

Sizes are in voxels, spacings in mm, CT intensities in Hounsfield units (HU); data are
channel-first, 2D ``(C, H, W)`` or 3D ``(C, H, W, D)``.
"""

from unet_med.transforms.chains import (
    inference_transforms,
    prediction_inversion_transforms,
    preprocessing_transforms,
    training_transforms,
    valid_patch_margin,
)
from unet_med.transforms.elastic import RandCoarseElasticd
from unet_med.transforms.intensity import (
    INTENSITY_MODES,
    BodyForeground,
    ForegroundAbove,
    ForegroundNormalizeIntensityd,
    body_foreground_mask,
)
from unet_med.transforms.weight_map import BorderWeightMapd, border_weight_map, class_balance_weights

__all__ = [
    "INTENSITY_MODES",
    "BorderWeightMapd",
    "RandCoarseElasticd",
    "ForegroundAbove",
    "BodyForeground",
    "ForegroundNormalizeIntensityd",
    "body_foreground_mask",
    "border_weight_map",
    "class_balance_weights",
    "valid_patch_margin",
    "preprocessing_transforms",
    "training_transforms",
    "inference_transforms",
    "prediction_inversion_transforms",
]
