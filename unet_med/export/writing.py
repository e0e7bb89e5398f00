"""A trained bundle checkpoint -> a folder that segments without the bundle: the network as ONNX
(or TorchScript) plus ``export.json``, everything inference needs besides the network.

``export.json`` holds, readable by people and by :func:`unet_med.export.runtime.load_export`:

- ``spatial_dims``, ``in_channels``, ``out_channels``, ``labels`` ({value: name}, 0 = background);
- ``preprocessing``: the target spacing (mm), the normalisation and its parameters, orientation and
  foreground crop, as the checkpoint's plan set them;
- ``sizes``: the network's size arithmetic in voxels: ``legal_input`` (``smallest_input + period * n``
  per axis, n >= 0), ``smallest_output``, ``margin`` (context consumed on each side of the output;
  output = input - 2 * margin), the pooling ``period``, and ``activation_bytes_per_voxel`` (the
  peak memory of one tile per input voxel, measured on the PyTorch network, which the overlap-tile
  inferer uses to choose tiles for a memory budget);
- ``plan`` (the ``plan.json`` ids applied) and ``network`` (the architecture, ``network.json``);
- ``config``: the bundle's ``preprocessing``, ``inferer`` and ``postprocessing`` with every config id
  they refer to (spacing, window, ...), a small MONAI config that ``load_export`` instantiates, so
  an exported model segments through the same transform chain and overlap-tile inferer;
- ``verified``: the largest difference between the exported network's and PyTorch's logits on a
  random tile at export time.

The training's ``mlflow_run.json`` (when there is one next to the checkpoint) is copied into the
folder, so ``unet-med infer --track`` on the export links to that training run.

The ONNX graph comes from ``torch.onnx.export(dynamo=True)`` (``torch.export``; the translation
needs ``onnxscript``). Its batch axis is free and each spatial axis is the symbolic size
``period * k + (smallest_input - period)`` with ``k >= 1``: the legal sizes of a valid-convolution
U-Net (every max pool sees an even size). ONNX Runtime does not check such a relation at run time,
so an illegal size would run and give a misaligned output;
:class:`~unet_med.export.runtime.OnnxRuntimeNetwork` refuses it before calling the session,
naming the nearest legal sizes.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_med.inference.bundle_loading import BundleError

__all__ = [
    "EXPORT_FILE",
    "FORMATS",
    "MODEL_FILES",
    "ExportResult",
    "export_bundle",
    "export_network",
    "exported_config",
    "legal_size_rule",
    "network_document",
    "require_onnx",
]

EXPORT_FILE = "export.json"
FORMATS = ("onnx", "torchscript")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
ENGINES = {"onnx": "onnxruntime", "torchscript": "torchscript"}
# the ids of inference.json that batch inference instantiates besides the network
_EXPORTED_IDS = ("preprocessing", "inferer", "postprocessing")
_LABEL_IDS = ("labels", "class_names")
_PREPROCESSING_SUMMARY = (
    "spacing", "axcodes", "intensity", "window", "intensity_clip", "intensity_mean", "intensity_std",
    "crop_foreground", "foreground_margin", "resample_order_image",
)  # fmt: skip
_REFERENCE = re.compile(r"@([A-Za-z_][\w#]*)")
ONNX_EXTRA_HINT = (
    "install the optional packages with: pip install 'unet-med[onnx]' (onnx, onnxscript, onnxruntime)"
)


def require_onnx(*modules: str) -> None:
    """Import ``modules`` (default onnx, onnxscript, onnxruntime) or raise one clear error.

    Raises:
        BundleError: naming the missing package and the extra that installs it.
    """
    import importlib

    for name in modules or ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise BundleError(f"ONNX needs the Python package {name!r}, which is not installed; "
                              f"{ONNX_EXTRA_HINT}") from None


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote: the model file, ``export.json`` and its content."""

    model_file: Path
    export_file: Path
    document: dict[str, Any]


def legal_size_rule(spec: Any) -> tuple[int, int]:
    """``(smallest_input, period)`` of a U-Net's legal input sizes along one axis: the legal sizes
    are exactly ``smallest_input + period * n`` for n >= 0 (checked over a few periods).

    Raises:
        ValueError: when the network's legal sizes do not follow that rule.
    """
    from unet_med.networks.shapes import is_legal_size, min_input_size

    smallest, period = min_input_size(1, spec)[0], 2**spec.poolings
    for size in range(1, smallest + 4 * period):
        expected = size >= smallest and (size - smallest) % period == 0
        if is_legal_size(size, spec) != expected:
            raise ValueError(
                f"legal input sizes of this U-Net are not {smallest} + {period} * n (size {size})"
            )
    return smallest, period


def _references(value: Any) -> set[str]:
    """Top-level config ids that ``value`` refers to with ``@id`` (also inside ``$`` expressions)."""
    found: set[str] = set()
    if isinstance(value, str):
        if value.startswith("%"):
            raise BundleError(f"export cannot follow the macro {value!r}: use a value or an @reference")
        found.update(m.split("#")[0] for m in _REFERENCE.findall(value))
    elif isinstance(value, Mapping):
        for v in value.values():
            found |= _references(v)
    elif isinstance(value, Sequence):
        for v in value:
            found |= _references(v)
    return found


def exported_config(parser: Any) -> dict[str, Any]:
    """The bundle ids batch inference instantiates (``preprocessing``, ``inferer``,
    ``postprocessing``, ``labels``/``class_names``) and every id they refer to, as raw config:
    a MONAI config that instantiates the same objects without the bundle."""
    todo = [k for k in (*_EXPORTED_IDS, *_LABEL_IDS) if k in parser]
    config: dict[str, Any] = {}
    while todo:
        key = todo.pop()
        if key in config:
            continue
        if key not in parser:
            raise BundleError(f"inference.json: '{key}' is referred to but not defined")
        config[key] = parser.get(key)
        todo.extend(_references(config[key]) - set(config))
    imports = parser.get("imports") or []
    return {"imports": list(imports), **{k: config[k] for k in sorted(config)}}


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data (tuples and numpy scalars/arrays become lists and numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _preprocessing_summary(parser: Any) -> dict[str, Any]:
    """Spacing (mm), normalisation and the other preprocessing arguments with references resolved."""
    summary = {}
    raw = parser.get("preprocessing") or {}
    for key in _PREPROCESSING_SUMMARY:
        if isinstance(raw, Mapping) and key in raw:
            summary[key] = _jsonable(parser.get_parsed_content(f"preprocessing#{key}"))
    return summary


def _example_input(network: Any, batch: int = 2) -> Any:
    """A random input of legal, pairwise different sizes k = 2, 3, ... periods above the smallest
    (``torch.export`` treats sizes 0 and 1 and equal sizes specially)."""
    import torch

    smallest, period = legal_size_rule(network.spec)
    sizes = [smallest + period * (1 + i) for i in range(network.spatial_dims)]
    generator = torch.Generator().manual_seed(0)
    return torch.rand((batch, network.in_channels, *sizes), generator=generator)


def export_network(network: Any, path: str | Path, fmt: str) -> float:
    """Write ``network`` (a :class:`~unet_med.networks.UNet`, eval mode, CPU) to ``path`` as ``fmt``
    (``onnx``: dynamic batch and legal spatial sizes, weights inside the one file; ``torchscript``:
    ``torch.jit.script`` as MONAI's ``ckpt_export``), atomically; returns the largest absolute
    difference between the written model's and PyTorch's logits on a random legal input.

    Raises:
        BundleError: an unknown format, a network without size arithmetic, missing ONNX packages.
    """
    import torch

    from unet_med.atomic_files import atomic_output

    if fmt not in FORMATS:
        raise BundleError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if getattr(network, "spec", None) is None:
        raise BundleError(
            f"export needs a unet_med UNet (with size arithmetic), got {type(network).__name__}"
        )
    network = network.eval().to("cpu")
    x = _example_input(network)
    with torch.no_grad():
        expected = network(x)
    path = Path(path)
    if fmt == "torchscript":
        with atomic_output(path) as tmp:
            torch.jit.save(torch.jit.script(network), str(tmp))
        with torch.no_grad():
            got = torch.jit.load(str(path))(x)
        return float((got - expected).abs().max())

    require_onnx()
    import onnxruntime
    from torch.export import Dim

    smallest, period = legal_size_rule(network.spec)
    # each spatial axis: period * k + (smallest - period) with k >= 1, i.e. smallest + period * n
    spatial = {
        axis + 2: period * Dim(f"k{axis}", min=1) + (smallest - period)
        for axis in range(network.spatial_dims)
    }
    dynamic = {"x": {0: Dim("batch", min=1), **spatial}}
    with atomic_output(path) as tmp:
        program = torch.onnx.export(
            network, (x,), dynamic_shapes=dynamic, input_names=["image"], output_names=["logits"],
            dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
        program.save(str(tmp))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    return float((got - expected).abs().max())


def network_document(network: Any) -> dict[str, Any]:
    """The fields of ``export.json`` that describe a :class:`~unet_med.networks.UNet`:
    ``spatial_dims``, ``in_channels``, ``out_channels``, ``sizes`` (voxels: smallest input and
    output, pooling period, margin per side, the rule of legal input sizes, and the peak bytes of
    one tile per input voxel for the inferer's memory budget) and ``network`` (its architecture)."""
    from unet_med.inferers import OverlapTileInferer, _Geometry
    from unet_med.networks.shapes import context_margin, min_input_size, valid_output_size

    spec, dims = network.spec, int(network.spatial_dims)
    smallest, period = legal_size_rule(spec)
    # the inferer's own measurement (PeakMemory on the PyTorch network): it cannot look inside
    # ONNX Runtime, so the exported engines carry this figure
    bytes_per_voxel = OverlapTileInferer()._activation_bytes_per_voxel(
        network, _Geometry(network, dims), network.in_channels, None
    )
    smallest_input = min_input_size(1, spec) * dims
    margin = context_margin(spec)[0]
    return {
        "spatial_dims": dims,
        "in_channels": int(network.in_channels),
        "out_channels": int(network.out_channels),
        "sizes": {
            "padding": spec.padding,
            "poolings": spec.poolings,
            "period": period,
            "smallest_input": list(smallest_input),
            "smallest_output": list(valid_output_size(smallest_input, spec)),
            "margin": [margin] * dims,
            "legal_input": f"{smallest} + {period} * n voxels per spatial axis (n >= 0); output = input - "
                           f"{2 * margin}; the ONNX graph names each spatial axis "
                           f"{period}*k + {smallest - period} (k >= 1)",
            "activation_bytes_per_voxel": round(bytes_per_voxel, 3),
        },
        "network": dict(network.config),
    }


def export_bundle(
    bundle_dir: str | Path,
    output_dir: str | Path,
    *,
    fmt: str = "onnx",
    checkpoint: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export the network of one bundle checkpoint (default ``bundle_dir/models/model.pt``, with
    its ``network.json`` and ``plan.json``) to ``output_dir/model.onnx`` (``model.ts`` for
    TorchScript) and write ``output_dir/export.json`` (see the module docstring).

    Raises:
        BundleError: an unusable bundle or checkpoint, a folder of several checkpoints (ensembles
            are not exported), a network without size arithmetic, missing ONNX packages.
    """
    from unet_med import __version__
    from unet_med.atomic_files import atomic_output
    from unet_med.data.writing import write_json
    from unet_med.inference.bundle_loading import checkpoint_files, inference_parser, load_bundle
    from unet_med.tracking.linked_runs import file_sha256, training_run_for_checkpoint
    from unet_med.tracking.run_record import RUN_FILE

    if fmt not in FORMATS:
        raise BundleError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if fmt == "onnx":
        require_onnx()
    bundle_dir, output_dir = Path(bundle_dir), Path(output_dir)
    found = checkpoint_files(checkpoint, bundle_dir / "models" / "model.pt")
    if len(found) != 1:
        raise BundleError(f"export takes one checkpoint, {checkpoint} holds {len(found)}: "
                          f"{', '.join(map(str, found[:4]))}; pass one of them with --checkpoint")
    bundle = load_bundle(bundle_dir, device="cpu", checkpoint=found[0], overrides=overrides)
    parser, plan = inference_parser(bundle_dir, found[0], overrides)
    network = bundle.network
    spec = getattr(network, "spec", None)
    if spec is None:
        raise BundleError(
            f"export needs a unet_med UNet (with size arithmetic), got {type(network).__name__}"
        )

    model_file = output_dir / MODEL_FILES[fmt]
    difference = export_network(network, model_file, fmt)
    document = {
        "format": fmt,
        "model_file": model_file.name,
        "model_sha256": file_sha256(model_file),
        "engine": ENGINES[fmt],
        "exported_by": f"unet-med {__version__}",
        "source": {
            "bundle": bundle.name,
            "bundle_version": bundle.version,
            "checkpoint": str(found[0].resolve()),
            "checkpoint_sha256": file_sha256(found[0]),
        },
        **network_document(network),
        "labels": {str(k): v for k, v in sorted(bundle.labels.items())},
        "input": {"name": "image", "layout": "(batch, channels, *spatial) float32, channels-first, "
                  "spatial axes in the preprocessed (RAS, resampled) grid"},
        "output": {"name": "logits", "layout": "(batch, out_channels, *spatial) float32 logits (no softmax)"},
        "preprocessing": _preprocessing_summary(parser),
        "plan": plan,
        "config": exported_config(parser),
        "verified": {"input_size": list(_example_input(network).shape), "max_abs_difference": difference},
    }
    if training_run_for_checkpoint(found[0]) is not None:
        # the training's run record travels along, so `unet-med infer --track` links to that run
        for folder in (found[0].parent.parent, found[0].parent):
            if (folder / RUN_FILE).is_file():
                with atomic_output(output_dir / RUN_FILE) as tmp:
                    shutil.copyfile(folder / RUN_FILE, tmp)
                break
    export_file = write_json(_jsonable(document), output_dir / EXPORT_FILE)
    return ExportResult(model_file=model_file, export_file=export_file, document=document)
