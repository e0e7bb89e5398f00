"""``unet-med infer``: clinical-style batch segmentation of a folder of NIfTI files and DICOM series.

The bundle's ``configs/inference.json`` holds the pieces, by id: ``network_def`` (the network),
``inferer`` (normally :class:`~unet_med.inferers.OverlapTileInferer`), ``preprocessing`` (a
dictionary transform on key ``"image"``, applied to the channel-first ``MetaTensor`` that
:func:`~unet_med.data.loading.load_scan` gives; a leading ``LoadImaged``/``EnsureChannelFirstd`` is
skipped because this command loads the scans itself), ``postprocessing`` (dictionary transform on
``"pred"``, e.g. :func:`~unet_med.postprocessing.postprocessing_transforms`; default: argmax and
inversion of the preprocessing), ``device`` and optionally ``class_names`` or ``labels``.

Per scan: ``OUT_DIR/<scan_id>_seg.nii.gz`` (uint8 labels in the scan's own geometry),
``OUT_DIR/<scan_id>_qc.png`` and, with ``--dicom-seg`` for DICOM inputs, ``OUT_DIR/<scan_id>_seg.dcm``.
The NIfTI is written last and atomically, so its presence means the scan is complete: a re-run
skips it. ``report.csv`` (``report.part-K-of-N.csv`` with ``--num-parts``) is rewritten after every
scan. The next scan is loaded and preprocessed in a background thread while the current one is
predicted, so peak memory is two scans plus the inferer's (stitched output + one window batch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EPILOG = """\
outputs (in OUT_DIR):
  <scan_id>_seg.nii.gz   uint8 label map in the scan's geometry (shape, spacing, origin, direction)
  <scan_id>_qc.png       a few slices with the predicted outlines
  <scan_id>_seg.dcm      DICOM SEG referencing the source series (--dicom-seg, DICOM inputs only)
  report.csv             scan_id, source, status (ok|failed|skipped), error, seconds,
                         voxels_<label>, volume_ml_<label> (report.part-K-of-N.csv with --num-parts)

exit codes:
  0  every scan ok or skipped (already segmented in OUT_DIR)
  1  at least one scan failed; its report row says why, every other scan was still segmented
  2  usage error: no scans found, bundle or inference.json missing, checkpoint missing or not a
     checkpoint, bad --part-id/--num-parts
"""


class UsageError(Exception):
    """A problem with the command line or its files (exit code 2)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="segment every NIfTI file and DICOM series under a folder with a bundle",
        description="Segment every NIfTI file and DICOM series under SCANS_DIR with the network, "
        "inferer and transforms of a bundle's configs/inference.json; write label maps in each "
        "scan's geometry, QC pictures and report.csv into OUT_DIR. Re-running on the same OUT_DIR "
        "skips scans already done.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, help="bundle folder (with configs/inference.json)")
    parser.add_argument("--input", type=Path, metavar="SCANS_DIR", help="folder searched for scans")
    parser.add_argument("--output", type=Path, metavar="OUT_DIR", help="folder for outputs and report.csv")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the bundle's device)")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="network weights (default: BUNDLE/models/model.pt)"
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
    parser.add_argument("--no-qc", action="store_true", help="do not write QC pictures")
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
        "(tag unet_med.training_run_id), in that training's store unless --tracking-uri is given",
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for --track (default: training's)")
    parser.add_argument("--experiment", default=None, help="experiment for --track (default: the training's)")
    parser.set_defaults(handler=run)


# ---------------------------------------------------------------------------------------- bundle
@dataclass
class InferenceBundle:
    """The parsed pieces of a bundle's ``inference.json``, network weights loaded."""

    name: str
    version: str
    network: Any
    inferer: Any
    preprocessing: Any
    postprocessing: Any
    device: Any
    labels: dict[int, str]
    spatial_dims: int
    in_channels: int


def load_checkpoint_state(path: Path) -> dict[str, Any]:
    """A network ``state_dict`` from ``path`` (``torch.load(weights_only=True)``): either the
    state_dict itself (``model.pt``) or a dict holding it under ``network``/``model``/``state_dict``.

    Raises:
        UsageError: missing file, not loadable with ``weights_only=True``, or no state_dict in it.
    """
    import torch

    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path} (train the bundle first or pass --checkpoint)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{path}: not a checkpoint that loads with torch.load(weights_only=True) ({detail[:200]})"
        ) from None
    state = None
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    elif isinstance(obj, Mapping):
        for key in ("network", "model", "state_dict", "net"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if state is None:
        found = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise UsageError(
            f"{path}: holds no network state_dict (expected the state_dict itself or a dict with a "
            f"'network' entry; found {found})"
        )
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state.items()}


def _network_io(network: Any) -> tuple[int, int]:
    """(spatial dims, input channels) of a network: its attributes, else its first convolution."""
    import torch

    dims, channels = getattr(network, "spatial_dims", None), getattr(network, "in_channels", None)
    if dims is None or channels is None:
        for m in network.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
                dims, channels = dims or m.weight.ndim - 2, channels or m.in_channels
                break
    return int(dims or 3), int(channels or 1)


def _bundle_labels(parser: Any, out_channels: int | None) -> dict[int, str]:
    """{label value: name} from ``labels``/``class_names`` in the config, else the metadata's
    output ``channel_def``, else ``label_<n>`` for every output channel."""
    for key in ("labels", "class_names"):
        if key in parser:
            value = parser.get_parsed_content(key)
            if isinstance(value, Mapping):
                return {int(k): str(v) for k, v in value.items()}
            if isinstance(value, Sequence) and not isinstance(value, str):
                return {i: str(v) for i, v in enumerate(value)}
    channel_def = parser.get("_meta_#network_data_format#outputs#pred#channel_def")
    if isinstance(channel_def, Mapping) and channel_def:
        return {int(k): str(v) for k, v in channel_def.items()}
    n = out_channels or 2
    return {0: "background", **{i: f"label_{i}" for i in range(1, n)}}


def _without_loading(preprocessing: Any) -> Any:
    """The preprocessing chain without a leading ``LoadImaged``/``EnsureChannelFirstd`` (scans
    arrive loaded and channel-first). The kept transforms are the same objects, so ``Invertd``
    with the bundle's full chain still matches their recorded operations."""
    from monai.transforms import Compose, EnsureChannelFirst, EnsureChannelFirstd, LoadImage, LoadImaged

    if not isinstance(preprocessing, Compose):
        return preprocessing
    steps = list(preprocessing.transforms)
    loading = (LoadImage, LoadImaged, EnsureChannelFirst, EnsureChannelFirstd)
    while steps and isinstance(steps[0], loading):
        steps.pop(0)
    return preprocessing if len(steps) == len(preprocessing.transforms) else Compose(steps)


def load_bundle(
    bundle_dir: Path,
    *,
    device: str | None = None,
    checkpoint: Path | None = None,
    tta: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> InferenceBundle:
    """Parse ``bundle_dir/configs/inference.json`` (with ``overrides`` {config id: value}) and load
    the checkpoint into its network.

    Raises:
        UsageError: missing bundle/config/ids, bad checkpoint, ``--tta`` without an OverlapTileInferer.
    """
    import torch
    from monai.bundle import ConfigParser

    from unet_med.inferers import OverlapTileInferer
    from unet_med.postprocessing import postprocessing_transforms

    config = bundle_dir / "configs" / "inference.json"
    if not bundle_dir.is_dir():
        raise UsageError(f"bundle folder not found: {bundle_dir}")
    if not config.is_file():
        raise UsageError(f"{bundle_dir}: no configs/inference.json")
    checkpoint = checkpoint or bundle_dir / "models" / "model.pt"
    state = load_checkpoint_state(checkpoint)

    parser = ConfigParser()
    parser.read_config(str(config))
    meta_file = bundle_dir / "configs" / "metadata.json"
    if meta_file.is_file():
        parser.read_meta(str(meta_file))
    parser["bundle_root"] = str(bundle_dir)
    # A checkpoint trained by a bundle names its architecture in network.json beside it, so the
    # network matches the weights whatever overrides (e.g. --base_width) trained it.
    network_file = checkpoint.parent / "network.json"
    if network_file.is_file():
        try:
            parser["network_def"] = json.loads(network_file.read_text())
        except ValueError as exc:
            raise UsageError(f"{network_file}: not valid JSON ({exc})") from None
    for key, value in (overrides or {}).items():
        parser[key] = value
    if device is not None:
        parser["device"] = f"$torch.device({device!r})"
    for key in ("network_def", "inferer", "preprocessing"):
        if key not in parser:
            raise UsageError(f"{config}: no '{key}' id (needed: network_def, inferer, preprocessing)")
    try:
        dev = parser.get_parsed_content("device") if "device" in parser else torch.device("cpu")
        network = parser.get_parsed_content("network_def")
        inferer = parser.get_parsed_content("inferer")
        preprocessing = parser.get_parsed_content("preprocessing")
        postprocessing = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
    except Exception as exc:
        raise UsageError(f"{config}: cannot be instantiated: {type(exc).__name__}: {exc}") from None
    dev = torch.device(dev)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise UsageError(
            f"{checkpoint}: weights do not fit the bundle's network_def ({' '.join(lines[:3])[:300]})"
        ) from None
    network = network.to(dev).eval()
    if tta:
        if not isinstance(inferer, OverlapTileInferer):
            raise UsageError(
                f"--tta needs an OverlapTileInferer as 'inferer', {config} has {type(inferer).__name__}"
            )
        inferer.tta_flips = True
    if postprocessing is None:
        postprocessing = postprocessing_transforms(preprocessing=preprocessing)
    dims, channels = _network_io(network)
    meta = parser.get("_meta_", {}) or {}
    return InferenceBundle(
        name=str(meta.get("name", bundle_dir.name)),
        version=str(meta.get("version", "0")),
        network=network,
        inferer=inferer,
        preprocessing=_without_loading(preprocessing),
        postprocessing=postprocessing,
        device=dev,
        labels=_bundle_labels(parser, getattr(network, "out_channels", None)),
        spatial_dims=dims,
        in_channels=channels,
    )


# ---------------------------------------------------------------------------------------- outputs
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_stem(scan_id: str) -> str:
    """A file-name stem for a scan id that cannot leave OUT_DIR: only ``[A-Za-z0-9._-]``, no
    leading dot, at most 120 characters; a short hash of the id is appended whenever the id had
    to be changed, so two ids never share outputs."""
    stem = _SAFE.sub("_", scan_id).lstrip(".")[:120] or "scan"
    if stem != scan_id:
        stem = f"{stem}_{hashlib.sha1(scan_id.encode()).hexdigest()[:8]}"
    return stem


def output_path(out_dir: Path, scan_id: str, suffix: str) -> Path:
    """``out_dir/<stem><suffix>``; ``ValueError`` if it would resolve outside ``out_dir``."""
    path = out_dir / f"{output_stem(scan_id)}{suffix}"
    if path.resolve().parent != out_dir.resolve():
        raise ValueError(f"scan {scan_id!r}: output path {path} would leave {out_dir}")
    return path


def _voxel_size(affine: Any, dims: int) -> list[float]:
    """Voxel edge lengths in mm from an affine's columns (rotations included)."""
    import numpy as np

    a = np.asarray(affine, dtype=float)
    return [float(v) for v in np.linalg.norm(a[:-1, :dims], axis=0)]


def _affine_4x4(affine: Any) -> Any:
    import numpy as np

    a = np.asarray(affine, dtype=float)
    if a.shape == (4, 4):
        return a
    out = np.eye(4)
    n = a.shape[0] - 1
    out[:n, :n], out[:n, 3] = a[:n, :n], a[:n, n]
    return out


def completed_output(path: Path, expected_shape: Sequence[int] | None) -> tuple[Any, list[float]] | None:
    """(label map, voxel size in mm) of a finished ``_seg.nii.gz``, or ``None`` when it is
    missing, unreadable or of the wrong shape (then the scan is segmented again)."""
    import nibabel as nib
    import numpy as np

    if not path.is_file():
        return None
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception:
        return None
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        return None
    return data, [float(z) for z in img.header.get_zooms()[: data.ndim]]


# ---------------------------------------------------------------------------------------- scans
@dataclass
class PreparedScan:
    """A loaded, preprocessed scan: ``data`` is the transform dictionary, ``image`` the first
    channel in the scan's own grid (for the QC picture), ``affine`` its RAS affine (mm)."""

    data: dict[str, Any]
    image: Any
    affine: Any
    spatial_shape: tuple[int, ...]


def prepare_scan(scan: Any, bundle: InferenceBundle) -> PreparedScan:
    """Load ``scan`` and run the bundle's preprocessing (runs in the background thread)."""
    from unet_med.data.loading import load_scan

    image = load_scan(scan)
    spatial = tuple(int(s) for s in image.shape[1:])
    if image.numel() == 0 or any(s == 0 for s in spatial):
        raise ValueError(f"scan {scan.scan_id}: empty image (shape {spatial})")
    if len(spatial) != bundle.spatial_dims:
        raise ValueError(
            f"scan {scan.scan_id}: {len(spatial)}D image of shape {spatial}, but the bundle's network "
            f"segments {bundle.spatial_dims}D images"
        )
    if image.shape[0] != bundle.in_channels:
        raise ValueError(
            f"scan {scan.scan_id}: {image.shape[0]} channel(s), but the bundle's network takes "
            f"{bundle.in_channels}"
        )
    affine = _affine_4x4(image.affine.numpy())
    raw = image[0].numpy().copy()
    data = bundle.preprocessing({"image": image})
    return PreparedScan(data=data, image=raw, affine=affine, spatial_shape=spatial)


def segment_prepared(prepared: PreparedScan, bundle: InferenceBundle, name: str) -> Any:
    """Label map (uint8, the scan's grid) of a prepared scan: inferer, postprocessing, checks."""
    import torch

    from unet_med.postprocessing import to_input_geometry

    data = prepared.data
    x = data["image"]
    with torch.no_grad():
        logits = bundle.inferer(x[None].to(bundle.device), bundle.network)
        data["pred"] = logits[0].to("cpu")
        data = bundle.postprocessing(data) if bundle.postprocessing is not None else data
    return to_input_geometry(
        data, preprocessing=bundle.preprocessing, spatial_shape=prepared.spatial_shape, name=name
    )


@dataclass
class BatchResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if type(exc).__name__ in ("ScanLoadError",) or text.startswith("scan "):
        return text[:500]
    return f"{type(exc).__name__}: {text}"[:500]


def segment_scans(
    scans: Sequence[Any],
    bundle: InferenceBundle,
    out_dir: Path,
    *,
    report_path: Path,
    dicom_seg: bool = False,
    qc: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    extra_rows: Sequence[Mapping[str, Any]] = (),
    references: Mapping[str, Path] | None = None,
) -> BatchResult:
    """Segment ``scans`` into ``out_dir``, rewriting ``report_path`` after every scan.

    ``references`` ({scan_id: reference label file}) adds ``dice_<label>`` to those scans' rows.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from tqdm import tqdm

    from unet_med import __version__
    from unet_med.data.loading import dicom_series_files
    from unet_med.data.writing import save_nifti
    from unet_med.dicom_seg import write_dicom_seg
    from unet_med.reporting import label_dice, label_volumes, save_qc_picture, write_report

    start = time.perf_counter()
    result = BatchResult(rows=[dict(r) for r in extra_rows])
    bar = tqdm(total=len(scans), unit="scan", desc="infer", disable=not progress, file=sys.stderr)

    dice = references is not None

    def agreement(scan_id: str, labels: Any) -> dict[str, Any]:
        """Dice against the reference label map, or a note in ``error`` when it cannot be read."""
        if not references or scan_id not in references:
            return {}
        from unet_med.data.loading import load_image

        try:
            reference = load_image(references[scan_id])[0].numpy()
            return label_dice(labels, np.rint(reference), bundle.labels)
        except Exception as exc:
            return {"error": f"reference {references[scan_id]}: {_one_line(exc)}"}

    def finish(row: dict[str, Any]) -> None:
        result.rows.append(row)
        write_report(result.rows, report_path, bundle.labels, dice=dice)
        bar.update(1)
        if row["status"] == "failed":
            bar.write(f"failed: {row['scan_id']}: {row['error']}", file=sys.stderr)

    todo = []
    for scan in scans:
        row = {"scan_id": scan.scan_id, "source": str(scan.source), "error": "", "seconds": 0.0}
        try:
            seg_path = output_path(out_dir, scan.scan_id, "_seg.nii.gz")
        except ValueError as exc:
            finish({**row, "status": "failed", "error": _one_line(exc)})
            continue
        shape = getattr(scan, "shape", None)
        done = None if overwrite else completed_output(seg_path, tuple(shape) if shape else None)
        if done is not None and dicom_seg and scan.kind == "dicom":
            done = done if output_path(out_dir, scan.scan_id, "_seg.dcm").is_file() else None
        if done is not None:
            volumes = label_volumes(done[0], done[1], bundle.labels)
            finish({**row, "status": "skipped", **volumes, **agreement(scan.scan_id, done[0])})
        else:
            todo.append(scan)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-loader") as pool:
        futures = {0: pool.submit(prepare_scan, todo[0], bundle)} if todo else {}
        for i, scan in enumerate(todo):
            t0 = time.perf_counter()
            if i + 1 < len(todo):  # load the next scan while this one is predicted
                futures[i + 1] = pool.submit(prepare_scan, todo[i + 1], bundle)
            row = {"scan_id": scan.scan_id, "source": str(scan.source), "error": ""}
            try:
                prepared = futures.pop(i).result()
                labels = segment_prepared(prepared, bundle, f"scan {scan.scan_id}")
                dims = len(prepared.spatial_shape)
                if qc:
                    qc_path = output_path(out_dir, scan.scan_id, "_qc.png")
                    save_qc_picture(prepared.image, labels, qc_path, title=scan.scan_id)
                if dicom_seg and scan.kind == "dicom":
                    write_dicom_seg(
                        labels,
                        dicom_series_files(list(scan.files), f"scan {scan.scan_id}"),
                        bundle.labels,
                        output_path(out_dir, scan.scan_id, "_seg.dcm"),
                        algorithm_name=bundle.name,
                        algorithm_version=f"{bundle.version} (unet-med {__version__})",
                    )
                save_nifti(labels, prepared.affine, output_path(out_dir, scan.scan_id, "_seg.nii.gz"))
                volumes = label_volumes(labels, _voxel_size(prepared.affine, dims), bundle.labels)
                row.update(status="ok", **volumes, **agreement(scan.scan_id, labels))
            except Exception as exc:  # one bad scan must not stop the others
                row.update(status="failed", error=_one_line(exc))
            row["seconds"] = round(time.perf_counter() - t0, 3)
            finish(row)
    bar.close()
    write_report(result.rows, report_path, bundle.labels, dice=dice)  # also when all rows are discovery's
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------- command
def discovery_failures(skipped: Sequence[Any]) -> list[dict[str, Any]]:
    """Report rows for what discovery set aside: an unreadable, truncated or 4D NIfTI/image file
    or a broken DICOM series is a *failed* scan; a non-image DICOM object (SEG, RTSTRUCT, DICOMDIR,
    no pixel data) is *skipped* with its reason. Other files (no DICOM preamble, hidden files)
    are not scans and get no row."""
    from unet_med.data.discovery import safe_scan_id
    from unet_med.data.loading import is_nifti, is_plain_image

    rows = []
    for item in skipped:
        path, reason = str(item.path), str(item.reason)
        if is_nifti(path) or is_plain_image(path):
            status = "failed"
        elif reason.startswith(("hidden file", "not a DICOM file")):
            continue
        elif reason.startswith(("non-image DICOM", "DICOMDIR", "DICOM file without pixel data")):
            status = "skipped"
        else:  # a broken series (listed by its folder) or an unreadable DICOM header
            status = "failed"
        stem = re.sub(r"(\.nii\.gz|\.nii|\.[A-Za-z]+)$", "", path)
        rows.append(
            {"scan_id": safe_scan_id(stem), "source": path, "status": status, "error": reason, "seconds": 0.0}
        )
    return rows


def _select_part(ids: Sequence[str], num_parts: int, part_id: int) -> set[str]:
    """Every ``num_parts``-th id of the sorted ids, starting at ``part_id``."""
    return set(sorted(ids)[part_id::num_parts])


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    """``ID=JSON`` pairs as {id: value}; a value that is not JSON is taken as a string."""
    import json

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


def _manifest_references(
    manifest: Path, split: str | None, scans: Sequence[Any], root: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """({scan_id: reference label file}, {scan_id: image path}) for the scans that the manifest
    (rows of ``split`` when given) lists: a NIfTI file by its path, a DICOM series by its folder."""
    from unet_med.data.manifest import ManifestError, read_manifest

    try:
        frame = read_manifest(manifest)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    if split is not None:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise UsageError(f"{manifest}: no rows with split {split!r}")
    rows = {Path(r.image).resolve(): r for r in frame.itertuples()}
    references, listed = {}, {}
    for scan in scans:
        first = Path(scan.files[0]).resolve()
        for key in (first, first.parent) if scan.kind == "dicom" else (first,):
            if key in rows:
                listed[scan.scan_id] = key
                if rows[key].label:
                    references[scan.scan_id] = Path(rows[key].label)
                break
    if split is not None and not listed:
        raise UsageError(f"{manifest}: none of its {split!r} images is among the scans under {root}")
    return references, listed


def _mean_dice_text(rows: Sequence[Mapping[str, Any]]) -> str:
    import math

    values = [
        float(v) for r in rows for k, v in r.items()
        if k.startswith("dice_") and v is not None and not math.isnan(float(v))
    ]
    scored = sum(1 for r in rows if any(k.startswith("dice_") for k in r))
    return f"; mean Dice {sum(values) / len(values):.3f} over {scored} scans" if values else ""


def _merge(out_dir: Path) -> int:
    from unet_med.reporting import merge_reports, read_report, report_summary

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
    try:
        return _run(args)
    except UsageError as exc:
        print(f"unet-med infer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    missing = [f"--{n}" for n in ("bundle", "input", "output") if getattr(args, n) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or use --merge-reports OUT_DIR)")
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        raise UsageError(f"--part-id must be in 0..{args.num_parts - 1} and --num-parts >= 1, got "
                         f"--part-id {args.part_id} --num-parts {args.num_parts}")
    if not args.input.is_dir():
        raise UsageError(f"input folder not found: {args.input}")
    if not args.bundle.is_dir():
        raise UsageError(f"bundle folder not found: {args.bundle}")

    from unet_med.data.discovery import discover_scans
    from unet_med.reporting import part_report_name, report_summary

    discovery = discover_scans(args.input)
    if not discovery.scans and not discovery_failures(discovery.skipped):
        skipped = f" ({len(discovery.skipped)} files skipped, e.g. {discovery.skipped[0].path}: " \
                  f"{discovery.skipped[0].reason})" if discovery.skipped else ""
        raise UsageError(f"no NIfTI files or DICOM series found under {args.input}{skipped}")
    overrides = _overrides(args.set)
    bundle = load_bundle(
        args.bundle, device=args.device, checkpoint=args.checkpoint, tta=args.tta, overrides=overrides
    )
    tracking = _plan_tracking(args) if args.track else None
    failures = discovery_failures(discovery.skipped)
    mine = _select_part([s.scan_id for s in discovery.scans] + [r["scan_id"] for r in failures],
                        args.num_parts, args.part_id)
    scans = [s for s in discovery.scans if s.scan_id in mine]
    references = None
    if args.reference is not None:
        references, listed = _manifest_references(args.reference, args.split, discovery.scans, args.input)
        if args.split is not None:
            scans = [s for s in scans if s.scan_id in listed]
            failures = [r for r in failures if (args.input / r["source"]).resolve() in listed.values()]
    out_dir = args.output
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / part_report_name(args.part_id, args.num_parts)
    result = segment_scans(
        scans,
        bundle,
        out_dir,
        report_path=report_path,
        dicom_seg=args.dicom_seg,
        qc=not args.no_qc,
        overwrite=args.overwrite,
        progress=True,
        extra_rows=[r for r in failures if r["scan_id"] in mine],
        references=references,
    )
    counts = report_summary([r["status"] for r in result.rows])
    part = f" (part {args.part_id} of {args.num_parts})" if args.num_parts > 1 else ""
    print(
        f"{len(result.rows)} scans{part}: {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['skipped']} skipped in {result.seconds:.1f} s{_mean_dice_text(result.rows)}; "
        f"report: {report_path}"
    )
    if tracking is not None:
        from unet_med.inference_tracking import log_inference_run

        run_id = log_inference_run(
            tracking, bundle_name=bundle.name, bundle_version=bundle.version,
            checkpoint=_checkpoint_path(args), report_path=report_path, status_counts=counts,
            seconds=result.seconds,
            params={"infer.tta": args.tta, "infer.num_parts": args.num_parts, "infer.part_id": args.part_id},
        )
        print(f"MLflow run {run_id} in {tracking.tracking_uri}")
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _checkpoint_path(args: argparse.Namespace) -> Path:
    return args.checkpoint or args.bundle / "models" / "model.pt"


def _plan_tracking(args: argparse.Namespace):
    """Where ``--track`` logs; checked before any scan is segmented (an unreachable store is a
    usage error, exit 2)."""
    from unet_med.inference_tracking import plan_inference_tracking
    from unet_med.tracking_store import TrackingStoreError

    try:
        return plan_inference_tracking(
            _checkpoint_path(args), tracking_uri=args.tracking_uri, experiment_name=args.experiment
        )
    except TrackingStoreError as exc:
        raise UsageError(str(exc)) from None
