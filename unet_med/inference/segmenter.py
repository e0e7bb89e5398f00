"""Batch segmentation as a library: one loaded bundle, any number of scans or folders.

:class:`BatchSegmenter` loads a bundle once and then segments one scan (:meth:`~BatchSegmenter.segment_scan`),
a list of scans (:meth:`~BatchSegmenter.segment_scans`) or everything under a folder
(:meth:`~BatchSegmenter.segment_folder`), writing each scan's outputs
(:mod:`unet_med.inference.outputs`) and one report row per scan
(:mod:`unet_med.inference.report`). ``unet-med infer`` is a thin command line around it; a
long-running mode (a watched inbox) constructs it once and calls it per arriving scan or folder.

Every segmented scan's row holds the seconds of its stages (``seconds_load`` ... ``seconds_write``,
:data:`~unet_med.inference.report.STAGE_COLUMNS`); on request its softmax is written beside the
label map (``save_probabilities``) and per-label intensity statistics and component counts go into
its row (``statistics``).

A scan whose outputs are complete is not segmented again (``overwrite=False``): its row is
``skipped`` with the volumes read back from its label map. One failing scan gets a ``failed`` row
and the others go on. Over a list of scans, the next scan is loaded and preprocessed in a
background thread while the current one is predicted, so peak memory is two scans plus the
inferer's (stitched output + one window batch).

Example::

    segmenter = BatchSegmenter.from_bundle("bundles/unet3d", checkpoint="run/models/model.pt")
    # or an ensemble: checkpoint=["fold0/models/model.pt", "fold1/models/model.pt"] or "cv_runs/"
    result = segmenter.segment_folder("scans/", "out/")  # out/report.csv, out/<scan>_seg.nii.gz
    row = segmenter.segment_scan(scan, "out/")  # one discovered scan, e.g. from a watched inbox
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.utils import affine_to_spacing

from unet_med.data.discovery import Scan, ScanDiscovery
from unet_med.dicom.selection import SeriesSelection
from unet_med.inference.bundle_loading import InferenceBundle, load_bundle
from unet_med.inference.cpu_tuning import channels_last_network, retain_freed_memory
from unet_med.inference.measurements import label_statistics
from unet_med.inference.outputs import finished_segmentation, write_scan_outputs
from unet_med.inference.prediction import PreparedScan, predict_label_map, prepare_scan
from unet_med.inference.references import manifest_references, reference_agreement
from unet_med.inference.report import (
    REPORT_NAME,
    discovery_rows,
    error_text,
    label_volumes,
    part_report_name,
    report_summary,
    write_report,
)

__all__ = ["BatchResult", "BatchSegmenter", "select_part"]


@dataclass
class BatchResult:
    """What a batch did: one report row per scan (dicts with the report's columns), the wall time
    in seconds and the report file it wrote."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    report_path: Path | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Rows per status: ``{"ok": n, "failed": n, "skipped": n}``."""
        return report_summary([r["status"] for r in self.rows])


def select_part(ids: Sequence[str], num_parts: int, part_id: int) -> set[str]:
    """Every ``num_parts``-th id of the sorted ids, starting at ``part_id``: the share of one of
    ``num_parts`` machines that segment one folder into one output folder.

    Raises:
        ValueError: unless ``num_parts >= 1`` and ``0 <= part_id < num_parts``.
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(
            f"part_id must be in 0..{num_parts - 1} and num_parts >= 1, got {part_id} of {num_parts}"
        )
    return set(sorted(ids)[part_id::num_parts])


class BatchSegmenter:
    """Segments scans with one loaded bundle and writes their outputs and report rows.

    Args:
        bundle: the loaded bundle (:func:`~unet_med.inference.bundle_loading.load_bundle`).
        qc: write a QC picture per scan.
        dicom_seg: also write a DICOM SEG for DICOM inputs.
        overwrite: segment scans again even when their outputs are complete.
        save_probabilities: also write the softmax per scan (``<scan>_probabilities.nii.gz``, 4D,
            class last, in the scan's geometry).
        statistics: add per-label intensity mean/std (original intensities, HU for CT) and
            connected-component counts to each segmented scan's report row.
        rtstruct: also write an RT Structure Set for DICOM inputs.
        cpu_tuning: when the bundle runs on the CPU, apply :mod:`~unet_med.inference.cpu_tuning`
            (glibc keeps freed memory for reuse, process-wide; 3D convolution weights in
            channels-last layout); False leaves the process and the network as they are.
    """

    def __init__(
        self,
        bundle: InferenceBundle,
        *,
        qc: bool = True,
        dicom_seg: bool = False,
        overwrite: bool = False,
        save_probabilities: bool = False,
        statistics: bool = False,
        rtstruct: bool = False,
        cpu_tuning: bool = True,
    ) -> None:
        if cpu_tuning and getattr(bundle.device, "type", str(bundle.device)) == "cpu":
            retain_freed_memory()
            bundle.network = channels_last_network(bundle.network)
        self.bundle = bundle
        self.qc = qc
        self.dicom_seg = dicom_seg
        self.overwrite = overwrite
        self.save_probabilities = save_probabilities
        self.statistics = statistics
        self.rtstruct = rtstruct

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | Path,
        *,
        checkpoint: str | Path | Sequence[str | Path] | None = None,
        device: str | None = None,
        tta: bool = False,
        overrides: Mapping[str, Any] | None = None,
        qc: bool = True,
        dicom_seg: bool = False,
        overwrite: bool = False,
        save_probabilities: bool = False,
        statistics: bool = False,
        rtstruct: bool = False,
        cpu_tuning: bool = True,
    ) -> BatchSegmenter:
        """Load ``bundle_dir`` (see :func:`~unet_med.inference.bundle_loading.load_bundle` for
        ``checkpoint``, ``device``, ``tta``, ``overrides``) and make a segmenter of it. Several
        checkpoints (a list or a folder of them) segment with their ensemble (mean softmax); the
        other arguments are the constructor's.

        Raises:
            BundleError: the bundle or checkpoint cannot be used.
        """
        bundle = load_bundle(bundle_dir, device=device, checkpoint=checkpoint, tta=tta, overrides=overrides)
        return cls(
            bundle,
            qc=qc,
            dicom_seg=dicom_seg,
            overwrite=overwrite,
            save_probabilities=save_probabilities,
            statistics=statistics,
            rtstruct=rtstruct,
            cpu_tuning=cpu_tuning,
        )

    # ------------------------------------------------------------------------------ one scan
    def prepare(self, scan: Scan) -> PreparedScan:
        """Load and preprocess ``scan`` (thread-safe: runs in the background loader)."""
        return prepare_scan(scan, self.bundle)

    def predict(self, prepared: PreparedScan, name: str) -> np.ndarray:
        """The uint8 label map of a prepared scan in its own grid; ``name`` goes into errors. With
        ``save_probabilities`` the softmax goes into ``prepared.probabilities``; stage seconds
        into ``prepared.seconds``."""
        return predict_label_map(prepared, self.bundle, name, probabilities=self.save_probabilities)

    def segment_scan(
        self, scan: Scan, out_dir: str | Path, *, reference: str | Path | None = None
    ) -> dict[str, Any]:
        """Segment one scan into ``out_dir`` (unless its outputs are complete) and return its report
        row; a scan that fails gets a ``failed`` row, nothing is raised.

        Args:
            scan: a discovered scan (:func:`~unet_med.data.discovery.discover_scans`).
            out_dir: the output folder (created).
            reference: a reference label file on the scan's grid: adds ``dice_<label>``.
        """
        out_dir = Path(out_dir)
        row = self._finished_row(scan, out_dir, reference)
        if row is None:
            row = self._segment(scan, lambda: self.prepare(scan), out_dir, reference)
        return row

    def _finished_row(self, scan: Scan, out_dir: Path, reference: Path | str | None) -> dict[str, Any] | None:
        """The row of a scan that needs no prediction: ``failed`` when its id cannot name files in
        ``out_dir``, ``skipped`` when its outputs are complete; None when it is to be segmented."""
        row = {"scan_id": scan.scan_id, "source": str(scan.source), "error": "", "seconds": 0.0}
        row.update(scan.report_fields())
        try:
            done = (
                None
                if self.overwrite
                else finished_segmentation(
                    out_dir,
                    scan,
                    dicom_seg=self.dicom_seg,
                    probabilities=self.save_probabilities,
                    rtstruct=self.rtstruct,
                )
            )
        except ValueError as exc:
            return {**row, "status": "failed", "error": error_text(exc)}
        if done is None:
            return None
        label_map, voxel_size = done
        row.update(status="skipped", **label_volumes(label_map, voxel_size, self.bundle.labels))
        return {**row, **self._agreement(label_map, reference)}

    def _segment(
        self, scan: Scan, prepared: Callable[[], PreparedScan], out_dir: Path, reference: Path | str | None
    ) -> dict[str, Any]:
        """Predict and write one scan; ``prepared`` gives its loaded scan (perhaps from the
        background loader, re-raising the loader's error)."""
        start = time.perf_counter()
        row: dict[str, Any] = {"scan_id": scan.scan_id, "source": str(scan.source), "error": ""}
        row.update(scan.report_fields())
        loaded: PreparedScan | None = None
        write_seconds: dict[str, float] = {}
        try:
            loaded = prepared()
            label_map = self.predict(loaded, f"scan {scan.scan_id}")
            measured = time.perf_counter()
            measurements = (
                label_statistics(label_map, loaded.image, self.bundle.labels) if self.statistics else {}
            )
            loaded.seconds["postprocess"] = loaded.seconds.get("postprocess", 0.0) + (
                time.perf_counter() - measured
            )
            written = time.perf_counter()
            write_scan_outputs(
                out_dir,
                scan,
                label_map,
                loaded.affine,
                labels=self.bundle.labels,
                qc_image=loaded.image if self.qc else None,
                dicom_seg=self.dicom_seg,
                rtstruct=self.rtstruct,
                algorithm_name=self.bundle.name,
                algorithm_version=self._algorithm_version(),
                probabilities=loaded.probabilities,
                seconds=write_seconds,
            )
            loaded.seconds["write"] = time.perf_counter() - written
            loaded.probabilities = None  # not kept past its file: (C, *spatial) float32
            voxel_size = affine_to_spacing(loaded.affine, r=3, suppress_zeros=False)[
                : len(loaded.spatial_shape)
            ]
            volumes = label_volumes(label_map, voxel_size, self.bundle.labels)
            row.update(status="ok", **volumes, **measurements, **self._agreement(label_map, reference))
        except Exception as exc:  # one bad scan must not stop the others
            row.update(status="failed", error=error_text(exc))
        row["seconds"] = round(time.perf_counter() - start, 3)
        stages = {**(loaded.seconds if loaded is not None else {}), **write_seconds}
        row.update({f"seconds_{stage}": value for stage, value in stages.items()})
        return row

    def _agreement(self, label_map: np.ndarray, reference: Path | str | None) -> dict[str, Any]:
        return (
            {} if reference is None else reference_agreement(label_map, Path(reference), self.bundle.labels)
        )

    def _algorithm_version(self) -> str:
        from unet_med import __version__

        return f"{self.bundle.version} (unet-med {__version__})"

    # ------------------------------------------------------------------------------ batches
    def segment_scans(
        self,
        scans: Sequence[Scan],
        out_dir: str | Path,
        *,
        report_path: str | Path | None = None,
        extra_rows: Sequence[Mapping[str, Any]] = (),
        references: Mapping[str, Path] | None = None,
        progress: bool = True,
    ) -> BatchResult:
        """Segment ``scans`` into ``out_dir``, rewriting ``report_path`` (default
        ``out_dir/report.csv``) after every scan; the next scan loads in a background thread.

        Args:
            scans: discovered scans.
            out_dir: the output folder (created).
            report_path: the report CSV.
            extra_rows: report rows that come from elsewhere (what discovery set aside).
            references: {scan_id: reference label file}; not None adds ``dice_<label>`` columns.
            progress: show a progress bar on stderr (and every failure as it happens).
        """
        from concurrent.futures import ThreadPoolExecutor  # looked up here: bench.batch swaps it

        from tqdm import tqdm

        start = time.perf_counter()
        out_dir = Path(out_dir)
        report_path = Path(report_path) if report_path is not None else out_dir / REPORT_NAME
        result = BatchResult(rows=[dict(r) for r in extra_rows], report_path=report_path)
        dice = references is not None
        references = references or {}
        bar = tqdm(total=len(scans), unit="scan", desc="infer", disable=not progress, file=sys.stderr)

        def finish(row: dict[str, Any]) -> None:
            result.rows.append(row)
            write_report(result.rows, report_path, self.bundle.labels, dice=dice, statistics=self.statistics)
            bar.update(1)
            if row["status"] == "failed":
                bar.write(f"failed: {row['scan_id']}: {row['error']}", file=sys.stderr)

        todo = []
        for scan in scans:
            row = self._finished_row(scan, out_dir, references.get(scan.scan_id))
            if row is None:
                todo.append(scan)
            else:
                finish(row)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-loader") as pool:
            futures = {0: pool.submit(self.prepare, todo[0])} if todo else {}
            for i, scan in enumerate(todo):
                if i + 1 < len(todo):  # load the next scan while this one is predicted
                    futures[i + 1] = pool.submit(self.prepare, todo[i + 1])
                finish(self._segment(scan, futures.pop(i).result, out_dir, references.get(scan.scan_id)))
        bar.close()
        write_report(
            result.rows, report_path, self.bundle.labels, dice=dice, statistics=self.statistics
        )  # also when all rows are discovery's
        result.seconds = time.perf_counter() - start
        return result

    def segment_folder(
        self,
        input_dir: str | Path,
        out_dir: str | Path,
        *,
        num_parts: int = 1,
        part_id: int = 0,
        reference_manifest: str | Path | None = None,
        split: str | None = None,
        discovery: ScanDiscovery | None = None,
        progress: bool = True,
        selection: SeriesSelection | None = None,
    ) -> BatchResult:
        """Segment every scan under ``input_dir`` (this part's share) into ``out_dir``.

        The report (``report.csv``, ``report.part-K-of-N.csv`` with several parts) also lists what
        discovery set aside (:func:`~unet_med.inference.report.discovery_rows`).

        Args:
            input_dir: the folder searched for scans.
            out_dir: the output folder (created).
            num_parts, part_id: segment only the ``part_id``-th of ``num_parts`` shares of the scans.
            reference_manifest: a manifest CSV with reference labels: ``dice_<label>`` columns.
            split: with ``reference_manifest``: only the scans of the manifest's rows of this split.
            discovery: what :func:`~unet_med.data.discovery.discover_scans` found under
                ``input_dir``, when the caller has it already.
            progress: show a progress bar on stderr.
            selection: series selection rules for the discovery (when ``discovery`` is None).

        Raises:
            ValueError: a bad ``part_id``/``num_parts``.
            ManifestError: an unusable ``reference_manifest`` or ``split``.
        """
        from unet_med.data.discovery import discover_scans

        input_dir, out_dir = Path(input_dir), Path(out_dir)
        discovery = discovery if discovery is not None else discover_scans(input_dir, selection)
        set_aside = discovery_rows(discovery.skipped)
        mine = select_part(
            [s.scan_id for s in discovery.scans] + [r["scan_id"] for r in set_aside], num_parts, part_id
        )
        scans = [s for s in discovery.scans if s.scan_id in mine]
        references = None
        if reference_manifest is not None:
            references, listed = manifest_references(reference_manifest, split, discovery.scans, input_dir)
            if split is not None:
                scans = [s for s in scans if s.scan_id in listed]
                set_aside = [r for r in set_aside if (input_dir / r["source"]).resolve() in listed.values()]
        out_dir.mkdir(parents=True, exist_ok=True)
        return self.segment_scans(
            scans,
            out_dir,
            report_path=out_dir / part_report_name(part_id, num_parts),
            extra_rows=[r for r in set_aside if r["scan_id"] in mine],
            references=references,
            progress=progress,
        )
