"""Planning: a dataset fingerprint (spacings, shapes, intensities, labels, modality) turned into a
plan of bundle ids (normalisation, spacing, patch and batch size, sampling, epoch length), as
nnU-Net configures itself from the data."""

from unet_med.planning.fingerprint import (
    MODALITIES,
    FingerprintError,
    cached_fingerprint,
    dataset_fingerprint,
    modality_from_intensities,
)
from unet_med.planning.plan import (
    PLAN_IDS,
    PLAN_VERSION,
    PlanError,
    check_plan,
    make_plan,
    read_plan,
    target_spacing,
    training_command,
    write_plan,
)
from unet_med.planning.training_cost import TrainingCost, device_throughput, training_cost

__all__ = [
    "MODALITIES",
    "PLAN_IDS",
    "PLAN_VERSION",
    "FingerprintError",
    "PlanError",
    "TrainingCost",
    "cached_fingerprint",
    "check_plan",
    "dataset_fingerprint",
    "device_throughput",
    "make_plan",
    "modality_from_intensities",
    "read_plan",
    "target_spacing",
    "training_command",
    "training_cost",
    "write_plan",
]
