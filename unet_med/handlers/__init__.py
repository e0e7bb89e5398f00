"""Ignite handlers the bundles attach to MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator``:
checkpoints with resume, batch-norm statistics recomputed before validation, the time budget and
its learning-rate decay, gradient clipping, the progress bar, the learning-curve and
validation-overlay pictures, and the per-case evaluation report.

Each handler has ``attach(engine)`` so a bundle lists it among an engine's handlers; those that
serve both engines tell them apart by ``isinstance(engine, monai.engines.Evaluator)``. Only rank 0
of a distributed run writes files.
"""

from unet_med.handlers.batch_norm import BatchNormRecalibration
from unet_med.handlers.budget import BudgetedPolyLR, TrainingBudget
from unet_med.handlers.checkpoint import TrainingCheckpoint
from unet_med.handlers.evaluation import EvaluationReport
from unet_med.handlers.gradients import GradientClipping
from unet_med.handlers.pictures import LearningCurvePlot, ValidationOverlays
from unet_med.handlers.progress import ProgressBar

__all__ = [
    "BatchNormRecalibration",
    "BudgetedPolyLR",
    "EvaluationReport",
    "GradientClipping",
    "LearningCurvePlot",
    "ProgressBar",
    "TrainingBudget",
    "TrainingCheckpoint",
    "ValidationOverlays",
]
