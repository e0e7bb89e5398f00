"""Batch inference as a library: a bundle loaded once segments scans and folders into label maps in
each scan's own geometry, QC pictures, DICOM SEG objects and a report.

- :mod:`~unet_med.inference.segmenter`: :class:`BatchSegmenter` (one scan, a list, a folder).
- :mod:`~unet_med.inference.bundle_loading`: ``inference.json`` + checkpoint(s), with the
  ``network.json`` and ``plan.json`` beside them -> :class:`InferenceBundle`.
- :mod:`~unet_med.inference.ensemble`: :class:`EnsembleNetwork`, several checkpoints as one
  network (the mean of their softmax).
- :mod:`~unet_med.inference.prediction`: one scan -> its label map (load, preprocess, infer, invert).
- :mod:`~unet_med.inference.postprocessing`: the bundle's post-processing chain; back to the scan's grid.
- :mod:`~unet_med.inference.outputs`: output names, the files per scan, finished-scan detection.
- :mod:`~unet_med.inference.report`: ``report.csv`` columns, rows, merge, volumes, Dice.
- :mod:`~unet_med.inference.references`: reference label maps from a manifest.
- :mod:`~unet_med.inference.inbox`: :class:`~unet_med.inference.inbox.InboxWatcher`, a watched
  inbox folder segmented scan by scan as drops settle.

``unet-med infer`` (:mod:`pipelines.infer`) and ``unet-med watch`` (:mod:`pipelines.watch`) are
the command lines around it.
"""

from unet_med.inference.bundle_loading import BundleError, InferenceBundle, load_bundle
from unet_med.inference.ensemble import EnsembleNetwork
from unet_med.inference.segmenter import BatchResult, BatchSegmenter

__all__ = [
    "BatchResult",
    "BatchSegmenter",
    "BundleError",
    "EnsembleNetwork",
    "InferenceBundle",
    "load_bundle",
]
