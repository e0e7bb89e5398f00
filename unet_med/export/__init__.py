"""Deployable exports of a trained bundle network and the engines that run them.

- :mod:`~unet_med.export.writing`: checkpoint -> ``model.onnx`` (dynamic batch, legal spatial sizes)
  or ``model.ts`` (TorchScript) + ``export.json`` (spacing, normalisation, labels, sizes and margin,
  the plan, the inference config).
- :mod:`~unet_med.export.runtime`: an export folder -> an :class:`~unet_med.inference.InferenceBundle`
  whose network runs in ONNX Runtime or TorchScript, for ``unet-med infer``.

``unet-med export`` (:mod:`pipelines.export`) is the command line around it. ONNX needs the optional
extra: ``pip install 'unet-med[onnx]'``.
"""

from unet_med.export.runtime import OnnxRuntimeNetwork, TorchScriptNetwork, is_export_folder, load_export
from unet_med.export.writing import EXPORT_FILE, FORMATS, ExportResult, export_bundle, export_network

__all__ = [
    "EXPORT_FILE",
    "FORMATS",
    "ExportResult",
    "OnnxRuntimeNetwork",
    "TorchScriptNetwork",
    "export_bundle",
    "export_network",
    "is_export_folder",
    "load_export",
]
