"""``unet-med infer``: clinical-style batch segmentation of a folder of NIfTI files and DICOM series.

The command line around :class:`unet_med.inference.BatchSegmenter` (which holds the work: bundle
loading, the batch loop with its background loader, resume, parts, outputs and report rows): it
parses the arguments, maps problems to exit codes, prints the summary and, with ``--track``, logs
the batch to MLflow. What the bundle's ``configs/inference.json`` must hold is described in
:mod:`unet_med.inference.bundle_loading`.

Per scan: ``OUT_DIR/<scan_id>_seg.nii.gz`` (uint8 labels in the scan's own geometry),
``OUT_DIR/<scan_id>_qc.png`` and, with ``--dicom-seg`` for DICOM inputs, ``OUT_DIR/<scan_id>_seg.dcm``;
with ``--rtstruct`` for DICOM inputs, ``OUT_DIR/<scan_id>_rtstruct.dcm``.
The NIfTI is written last and atomically, so its presence means the scan is complete: a re-run
skips it. ``report.csv`` (``report.part-K-of-N.csv`` with ``--num-parts``) is rewritten after every
scan. Heavy imports (torch, MONAI) happen in :func:`run`, so ``unet-med --help`` stays fast.

``--bundle`` may also be a folder written by ``unet-med export`` (:mod:`pipelines.export`): the
exported network then runs in ONNX Runtime or TorchScript (``--engine``) through the same
preprocessing, inferer, post-processing and outputs (:func:`unet_med.export.load_export`).

Training's preprocessing is repeated without ``--set``: the ``plan.json`` beside the checkpoint is
applied to ``inference.json`` (``--set`` still wins). Several ``--checkpoint`` values, or a folder
of training runs, segment with the ensemble of those networks (the mean of their softmax).
``--model models:/NAME/VERSION`` segments with a registered MLflow model instead of a bundle folder
(:mod:`unet_med.tracking.models`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EPILOG = """\
outputs (in OUT_DIR):
  <scan_id>_seg.nii.gz   uint8 label map in the scan's geometry (shape, spacing, origin, direction)
  <scan_id>_qc.png       a few slices with the predicted outlines
  <scan_id>_seg.dcm      DICOM SEG referencing the source series (--dicom-seg, DICOM inputs only)
  <scan_id>_rtstruct.dcm RT Structure Set referencing the source series: one ROI per label (the
                         bundle's class names, QC-picture colours), closed planar contours per
                         slice in patient coordinates (--rtstruct, DICOM inputs only)
  <scan_id>_probabilities.nii.gz
                         softmax per class (--save-probabilities): 4D NIfTI (i, j, k, class), 2D
                         scans (i, j, 1, class); the scan's geometry, float16 precision stored as
                         float32, sums to 1; its argmax is the label map before the bundle's clean-ups
  report.csv             scan_id, source, status (ok|failed|skipped), error, seconds,
                         kind (nifti|dicom|image|skipped-object), study_id, selection, warning,
                         voxels_<label>, volume_ml_<label> (report.part-K-of-N.csv with --num-parts),
                         with --statistics intensity_mean_<label>, intensity_std_<label> (the scan's
                         own intensities: HU for CT) and components_<label> (connected components,
                         full connectivity), then the seconds per stage: seconds_load,
                         seconds_preprocess, seconds_predict, seconds_postprocess, seconds_write
                         (of which seconds_write_qc, seconds_write_rtstruct,
                         seconds_write_dicom_seg); one row per file or series found, each with its
                         own scan_id

series selection (--select RULE, repeatable; all rules must hold):
  NAME OP VALUE          e.g. --select "Modality==CT" --select "slices>=20" --select "SliceThickness<=5"
                         --select "orientation==axial" --select "SeriesDescription~/(?i)axial/"
  NAME                   slices, orientation (axial|coronal|sagittal|oblique|mixed), slice_spacing,
                         pixel_spacing (mm), kind (nifti|dicom|image), or a DICOM attribute: Modality,
                         BodyPartExamined, SeriesDescription, ProtocolName, ImageType, SliceThickness,
                         SpacingBetweenSlices, SeriesNumber, Manufacturer, ConvolutionKernel, ...
  OP                     == != (text, case-insensitive; A,B = either; ImageType==X: X is one of its
                         values), < <= > >= (numbers), ~ !~ (regular expression, /.../ optional)
  default                the bundle's configs/series_selection.json; --select replaces it,
                         --no-select turns it off. A value a scan lacks (a NIfTI file has no
                         Modality) satisfies only != and !~. Not selected: status skipped,
                         selection "not selected: <rule> (found ...)". `unet-med scans --select`
                         shows the decisions without segmenting.

checkpoints and ensembles:
  --checkpoint FILE      one network (default BUNDLE/models/model.pt); the network.json and plan.json
                         beside it rebuild its architecture and repeat training's preprocessing
  --checkpoint A --checkpoint B ...
                         an ensemble: the mean of the members' softmax, then argmax; each member
                         rebuilt from its own network.json; their plan.json must agree
  --checkpoint FOLDER    every models/model.pt below FOLDER (one per training run, e.g. per fold;
                         MLflow artifact and hidden folders skipped), sorted by path; a folder with
                         none: every *.pt file directly in it, sorted by name

registered models (MLflow Model Registry):
  --model models:/NAME/VERSION   or models:/NAME@ALIAS: a model a training registered with
                         --register_model NAME; its bundle configs, weights, network.json and
                         plan.json are downloaded from --tracking-uri (default $MLFLOW_TRACKING_URI)
                         and used as --bundle + --checkpoint would be; no bundle folder needed

exported models (unet-med export):
  --bundle EXPORT_DIR    a folder written by unet-med export (model.onnx or model.ts + export.json)
                         segments with the exported network through the same preprocessing,
                         overlap-tile inferer, postprocessing and outputs; no bundle or checkpoint
  --engine ENGINE        pytorch (a bundle folder), onnxruntime (an ONNX export: needs
                         pip install 'unet-med[onnx]') or torchscript (a TorchScript export);
                         default: pytorch for a bundle, the export's own engine for an export

exit codes:
  0  every scan ok or skipped (already segmented in OUT_DIR)
  1  at least one scan failed; its report row says why, every other scan was still segmented
  2  usage error: no scans found, bundle or inference.json missing, checkpoint missing or not a
     checkpoint, ensemble members that do not match (plans, shape arithmetic, channels),
     bad --part-id/--num-parts, a --select rule (or series_selection.json) that does not parse,
     a --model (name, version or alias) the store does not have
"""


class UsageError(Exception):
    """A problem with the command line (exit code 2); the library's BundleError and ManifestError
    exit with 2 as well."""


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--select RULE`` (repeatable) and ``--no-select``: shared by ``infer`` and ``scans``."""
    parser.add_argument(
        "--select",
        action="append",
        default=None,
        metavar="RULE",
        help='series selection rule NAME OP VALUE, e.g. "Modality==CT", "slices>=20" (repeatable, all must '
        "hold; replaces the bundle's configs/series_selection.json)",
    )
    parser.add_argument(
        "--no-select", action="store_true", help="ignore the bundle's configs/series_selection.json"
    )


def selection_from_args(args: argparse.Namespace, bundle: Path | None):
    """The rules in effect: ``--select`` rules, else none with ``--no-select``, else the bundle's
    ``configs/series_selection.json`` (None when it has none).

    Raises:
        UsageError: a rule that does not parse (naming its position) or both options given.
    """
    from unet_med.dicom.selection import SelectionRuleError, bundle_selection, parse_rules

    if args.select and args.no_select:
        raise UsageError("--select and --no-select exclude each other")
    try:
        if args.select:
            return parse_rules(args.select)
        if args.no_select or bundle is None or not bundle.is_dir():
            return None
        return bundle_selection(bundle)
    except SelectionRuleError as exc:
        raise UsageError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="segment every NIfTI file and DICOM series under a folder with a bundle",
        description="Segment every NIfTI file and DICOM series under SCANS_DIR with the network, "
        "inferer and transforms of a bundle's configs/inference.json (or of a registered MLflow model: "
        "--model); write label maps in each scan's geometry, QC pictures and report.csv into OUT_DIR. "
        "Re-running on the same OUT_DIR skips scans already done.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODEL_URI",
        help="a registered MLflow model instead of --bundle: models:/NAME/VERSION or models:/NAME@ALIAS "
        "(a training with --register_model NAME registers one); needs --tracking-uri or MLFLOW_TRACKING_URI",
    )
    parser.add_argument(
        "--engine", choices=("pytorch", "onnxruntime", "torchscript"), default=None,
        help="what runs the network (default: pytorch for a bundle, the export's engine for an export "
        "folder)",
    )  # fmt: skip
    parser.add_argument("--input", type=Path, metavar="SCANS_DIR", help="folder searched for scans")
    parser.add_argument("--output", type=Path, metavar="OUT_DIR", help="folder for outputs and report.csv")
    add_segmenter_options(parser)
    add_selection_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="segment scans again even when done")
    parser.add_argument("--num-parts", type=int, default=1, help="split the scans into N parts (default 1)")
    parser.add_argument("--part-id", type=int, default=0, help="which part (0 .. N-1) this run segments")
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="MANIFEST",
        default=None,
        help="manifest CSV with reference labels: adds dice_<label> columns and prints the mean Dice",
    )
    parser.add_argument(
        "--split", default=None, help="with --reference: segment only the scans of this split (e.g. test)"
    )
    parser.add_argument(
        "--merge-reports",
        type=Path,
        metavar="OUT_DIR",
        default=None,
        help="merge OUT_DIR/report.part-*.csv into OUT_DIR/report.csv and exit",
    )
    parser.add_argument(
        "--track",
        action="store_true",
        help="log this batch as an MLflow run linked to the training run of the checkpoint "
        "(tag unet_med.training_run_id), in that training's store unless --tracking-uri is given; "
        "an ensemble links to its first member's training and lists every member as params",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store: where --model is registered (default: $MLFLOW_TRACKING_URI) and where --track "
        "logs (default: training's); a URI, an SQLite file or a training's output folder",
    )
    parser.add_argument(
        "--experiment", default=None, help="experiment for --track (default: <the training's>-inference)"
    )
    parser.set_defaults(handler=run)


def add_segmenter_options(parser: argparse.ArgumentParser) -> None:
    """The options of the model and of what is written per scan, shared by ``unet-med infer`` and
    ``unet-med watch``: a new output option is added here and passed on in :func:`segmenter_from_args`."""
    parser.add_argument(
        "--bundle", type=Path,
        help="bundle folder (with configs/inference.json), or an export folder written by unet-med export",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the bundle's device)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=None,
        metavar="FILE_OR_FOLDER",
        help="network weights (default: BUNDLE/models/model.pt); repeat it, or give a folder of training "
        "runs, to segment with the ensemble (mean softmax) of several networks",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=JSON",
        help="override a config id, e.g. --set base_width=8 --set inferer#memory_budget_mb=4096 (repeatable)",
    )
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: mean over flipped inputs")
    parser.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG for DICOM inputs")
    parser.add_argument(
        "--rtstruct",
        action="store_true",
        help="also write an RT Structure Set (RTSTRUCT, for radiotherapy planning systems) for DICOM inputs",
    )
    parser.add_argument("--no-qc", action="store_true", help="do not write QC pictures")
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write each scan's softmax as <scan_id>_probabilities.nii.gz (4D, class last, in the "
        "scan's geometry)",
    )
    parser.add_argument(
        "--statistics",
        action="store_true",
        help="add per-label intensity mean/std (HU for CT) and connected-component counts to report.csv",
    )
    parser.add_argument(
        "--no-cpu-tuning",
        action="store_true",
        help="on the CPU, keep the memory allocator's defaults and the network's layout: prediction about "
        "2.2x slower for a 3D network, 10-25%% less peak memory",
    )


def segmenter_from_args(args: argparse.Namespace, *, overwrite: bool = False, bundle: Path | None = None):
    """The :class:`~unet_med.inference.BatchSegmenter` of :func:`add_segmenter_options`' arguments,
    with the bundle loaded (its ensemble and applied plan printed); ``bundle`` replaces
    ``args.bundle`` (e.g. a registered model's downloaded bundle folder).

    Raises:
        UsageError: bad ``--set``; BundleError: the bundle or checkpoint cannot be used.
    """
    from unet_med.inference import BatchSegmenter

    segmenter = BatchSegmenter.from_bundle(
        bundle if bundle is not None else args.bundle, checkpoint=args.checkpoint, device=args.device,
        tta=args.tta,
        overrides=_overrides(args.set), qc=not args.no_qc, dicom_seg=args.dicom_seg, overwrite=overwrite,
        save_probabilities=args.save_probabilities, statistics=args.statistics, rtstruct=args.rtstruct,
        cpu_tuning=not args.no_cpu_tuning,
    )
    bundle = segmenter.bundle
    if len(bundle.checkpoints) > 1:
        print(f"ensemble of {len(bundle.checkpoints)} checkpoints: {', '.join(map(str, bundle.checkpoints))}")
    if bundle.plan_file is not None:
        ids = ", ".join(sorted(bundle.plan or {})) or "none of its ids is in inference.json"
        print(f"plan applied: {bundle.plan_file} ({ids})")
    return segmenter


# ---------------------------------------------------------------------------------------- command
def _overrides(items: Sequence[str]) -> dict[str, Any]:
    """``ID=JSON`` pairs as {id: value}; a value that is not JSON is taken as a string."""
    result = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects ID=VALUE, got {item!r}")
        try:
            result[key] = json.loads(text)
        except json.JSONDecodeError:
            result[key] = text
    return result


def _mean_dice_text(rows: Sequence[dict[str, Any]]) -> str:
    from unet_med.inference.report import mean_dice

    found = mean_dice(rows)
    return f"; mean Dice {found[0]:.3f} over {found[1]} scans" if found else ""


def _merge(out_dir: Path) -> int:
    from unet_med.inference.report import merge_reports, read_report, report_summary

    try:
        path = merge_reports(out_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"unet-med infer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    counts = report_summary(list(read_report(path)["status"]))
    print(f"merged {sum(counts.values())} scans into {path}: {counts['ok']} ok, {counts['failed']} failed, "
          f"{counts['skipped']} skipped")
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.merge_reports is not None:
        return _merge(args.merge_reports)
    from unet_med.data.manifest import ManifestError
    from unet_med.inference import BundleError

    try:
        return _run(args)
    except (UsageError, BundleError, ManifestError) as exc:
        print(f"unet-med infer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    needed = ("input", "output") if args.model is not None else ("bundle", "input", "output")
    missing = [f"--{n}" for n in needed if getattr(args, n) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or use --merge-reports OUT_DIR)")
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        raise UsageError(f"--part-id must be in 0..{args.num_parts - 1} and --num-parts >= 1, got "
                         f"--part-id {args.part_id} --num-parts {args.num_parts}")
    if not args.input.is_dir():
        raise UsageError(f"input folder not found: {args.input}")
    if args.model is not None:
        return _run_registered_model(args)
    if not args.bundle.is_dir():
        raise UsageError(f"bundle folder not found: {args.bundle}")
    return _segment(args, args.bundle)


def _registry_uri(args: argparse.Namespace) -> str:
    """The store that holds ``--model``: ``--tracking-uri`` (a URI, an SQLite file or an output
    folder holding ``mlflow.db``), else ``MLFLOW_TRACKING_URI``; checked to answer."""
    import os

    from unet_med.tracking.store import TrackingStoreError, check_tracking_store, existing_store_uri

    location = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not location:
        raise UsageError(
            f"--model {args.model} needs the MLflow store it is registered in: pass --tracking-uri "
            "(e.g. http://127.0.0.1:5000 or sqlite:///path/mlflow.db) or set MLFLOW_TRACKING_URI"
        )
    try:
        uri = existing_store_uri(location)
        check_tracking_store(uri)
    except TrackingStoreError as exc:
        raise UsageError(str(exc)) from None
    return uri


def _run_registered_model(args: argparse.Namespace) -> int:
    """``--model models:/NAME/VERSION``: download the registered model's bundle folder into a
    temporary folder and segment with it as with ``--bundle``."""
    import tempfile

    clashing = [flag for flag, value in (("--bundle", args.bundle), ("--checkpoint", args.checkpoint),
                                         ("--track", args.track)) if value]
    if clashing:
        raise UsageError(f"--model brings its own bundle and weights; drop {', '.join(clashing)}")
    uri = _registry_uri(args)
    from unet_med.tracking.models import ModelRegistryError, download_model_bundle

    with tempfile.TemporaryDirectory(prefix="unet-med-model-") as tmp:
        try:
            bundle_dir = download_model_bundle(args.model, uri, tmp)
        except ModelRegistryError as exc:
            raise UsageError(str(exc)) from None
        print(f"model {args.model} from {uri}")
        return _segment(args, bundle_dir)


def _segment(args: argparse.Namespace, bundle_dir: Path) -> int:
    """Segment ``args.input`` into ``args.output`` with the bundle folder ``bundle_dir``."""

    from unet_med.data.discovery import discover_scans
    from unet_med.inference.report import discovery_rows

    selection = selection_from_args(args, bundle_dir)
    discovery = discover_scans(args.input, selection)
    if not discovery.scans and not discovery_rows(discovery.skipped):
        skipped = f" ({len(discovery.skipped)} files skipped, e.g. {discovery.skipped[0].path}: " \
                  f"{discovery.skipped[0].reason})" if discovery.skipped else ""
        raise UsageError(f"no NIfTI files or DICOM series found under {args.input}{skipped}")
    segmenter = _exported_segmenter(args, bundle_dir)
    if segmenter is None:
        segmenter = segmenter_from_args(args, overwrite=args.overwrite, bundle=bundle_dir)
    bundle = segmenter.bundle
    if selection is not None:
        chosen = sum(1 for s in discovery.skipped if s.kind.value == "not_selected")
        print(f"series selection ({selection.origin}): {selection.describe()}; "
              f"{len(discovery.scans)} selected, {chosen} not selected")
    tracking = _plan_tracking(args, bundle.checkpoints[0]) if args.track else None
    result = segmenter.segment_folder(
        args.input, args.output, num_parts=args.num_parts, part_id=args.part_id,
        reference_manifest=args.reference, split=args.split, discovery=discovery,
    )
    counts = result.counts
    part = f" (part {args.part_id} of {args.num_parts})" if args.num_parts > 1 else ""
    print(
        f"{len(result.rows)} scans{part}: {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['skipped']} skipped in {result.seconds:.1f} s{_mean_dice_text(result.rows)}; "
        f"report: {result.report_path}"
    )
    if tracking is not None:
        from unet_med.tracking.linked_runs import log_inference_run

        params = {"infer.tta": args.tta, "infer.num_parts": args.num_parts, "infer.part_id": args.part_id}
        params.update(_ensemble_params(bundle.checkpoints))
        run_id = log_inference_run(
            tracking, bundle_name=bundle.name, bundle_version=bundle.version,
            checkpoint=bundle.checkpoints[0], report_path=result.report_path, status_counts=counts,
            seconds=result.seconds, params=params, input_dir=args.input,
        )
        print(f"MLflow run {run_id} in {tracking.tracking_uri}")
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _exported_segmenter(args: argparse.Namespace, bundle_dir: Path):
    """A segmenter over the exported model when ``bundle_dir`` (``--bundle``) is an export folder
    (None for a bundle folder with the PyTorch engine); the engine and the folder must match."""
    from unet_med.export import is_export_folder, load_export
    from unet_med.inference import BatchSegmenter

    if not is_export_folder(bundle_dir):
        if args.engine not in (None, "pytorch"):
            raise UsageError(
                f"--engine {args.engine} runs an exported model: {args.bundle} is not an export folder (no "
                f"export.json); write one with: unet-med export --bundle {args.bundle} --output DIR"
            )
        return None
    if args.engine == "pytorch":
        raise UsageError(f"{args.bundle} is an export folder: use --engine onnxruntime or torchscript, "
                         f"or --bundle BUNDLE_DIR for PyTorch")
    if args.checkpoint:
        raise UsageError(f"--checkpoint does not apply to an export folder ({args.bundle} holds its network)")
    bundle = load_export(args.bundle, engine=args.engine, device=args.device, tta=args.tta,
                         overrides=_overrides(args.set))
    print(f"exported model: {bundle.checkpoints[0]} ({type(bundle.network).__name__})")
    return BatchSegmenter(
        bundle, qc=not args.no_qc, dicom_seg=args.dicom_seg, overwrite=args.overwrite,
        save_probabilities=args.save_probabilities, statistics=args.statistics, rtstruct=args.rtstruct,
        cpu_tuning=not args.no_cpu_tuning,
    )


def _ensemble_params(checkpoints: Sequence[Path]) -> dict[str, Any]:
    """MLflow params of an ensemble (none for one checkpoint): its size, every member's path and
    the training run recorded next to each (empty where none is), as JSON lists in member order.

    An inference run has one ``unet_med.training_run_id`` tag, which names the first member's
    training; these params keep the link to all the others."""
    if len(checkpoints) < 2:
        return {}
    from unet_med.tracking.linked_runs import training_run_for_checkpoint
    from unet_med.tracking.store import TrackingStoreError

    def run_id(path: Path) -> str:
        try:
            record = training_run_for_checkpoint(path)
        except TrackingStoreError:
            return ""
        return record.run_id if record is not None else ""

    return {
        "infer.ensemble_size": len(checkpoints),
        "infer.ensemble_checkpoints": json.dumps([str(Path(c).resolve()) for c in checkpoints]),
        "infer.ensemble_training_runs": json.dumps([run_id(Path(c)) for c in checkpoints]),
    }


def _plan_tracking(args: argparse.Namespace, checkpoint: Path):
    """Where ``--track`` logs (next to ``checkpoint``'s training, the first member of an
    ensemble); checked before any scan is segmented (an unreachable store is a usage error, exit 2)."""
    from unet_med.tracking.linked_runs import plan_inference_tracking
    from unet_med.tracking.store import TrackingStoreError

    try:
        return plan_inference_tracking(
            checkpoint, tracking_uri=args.tracking_uri, experiment_name=args.experiment
        )
    except TrackingStoreError as exc:
        raise UsageError(str(exc)) from None
