"""U-Net networks: the generic :class:`UNet`, its presets and the size arithmetic."""

from unet_med.networks.presets import (
    PRESETS,
    count_conv_layers,
    count_parameters,
    create_unet,
    load_vgg16_features,
    preset_depth,
    preset_table,
)
from unet_med.networks.shapes import (
    UNetShapeSpec,
    check_input_size,
    context_margin,
    input_patch_size,
    is_legal_size,
    min_input_size,
    nearest_legal_sizes,
    valid_output_size,
)
from unet_med.networks.unet import UNet, he_normal_

__all__ = [
    "PRESETS",
    "UNet",
    "UNetShapeSpec",
    "check_input_size",
    "context_margin",
    "count_conv_layers",
    "count_parameters",
    "create_unet",
    "he_normal_",
    "input_patch_size",
    "is_legal_size",
    "load_vgg16_features",
    "min_input_size",
    "nearest_legal_sizes",
    "preset_depth",
    "preset_table",
    "valid_output_size",
]
