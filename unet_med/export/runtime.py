"""An export folder (``model.onnx`` or ``model.ts`` + ``export.json``, written by
:func:`~unet_med.export.writing.export_bundle`) -> an :class:`~unet_med.inference.InferenceBundle`
whose network runs in ONNX Runtime or TorchScript, so batch inference (``unet-med infer``) runs
it through the same preprocessing, overlap-tile inferer, post-processing and outputs as a bundle.

The engines are callables with the attributes the overlap-tile inferer reads from a U-Net:
``spec`` (size arithmetic), ``spatial_dims``, ``in_channels``, ``out_channels`` and
``activation_bytes_per_voxel`` (measured on the PyTorch network at export: the inferer's own
measurement cannot see inside ONNX Runtime). They refuse inputs of illegal sizes with the nearest
legal ones, because an ONNX graph does not check the relation between its symbolic sizes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet_med.export.writing import EXPORT_FILE, require_onnx
from unet_med.inference.bundle_loading import BundleError, InferenceBundle
from unet_med.networks.shapes import UNetShapeSpec, check_input_size

__all__ = [
    "ENGINES",
    "OnnxRuntimeNetwork",
    "TorchScriptNetwork",
    "is_export_folder",
    "load_export",
    "read_export",
]

ENGINES = ("onnxruntime", "torchscript")
_ENGINE_FORMAT = {"onnxruntime": "onnx", "torchscript": "torchscript"}


def is_export_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder written by ``unet-med export`` (it holds ``export.json``)."""
    return (Path(path) / EXPORT_FILE).is_file()


def read_export(folder: str | Path) -> dict[str, Any]:
    """The ``export.json`` of an export folder.

    Raises:
        BundleError: no ``export.json``, not JSON, or without the fields inference needs.
    """
    path = Path(folder) / EXPORT_FILE
    if not path.is_file():
        raise BundleError(
            f"{folder}: no {EXPORT_FILE} (write one with: unet-med export --bundle B --output DIR)"
        )
    try:
        document = json.loads(path.read_text())
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    needed = ("format", "model_file", "spatial_dims", "in_channels", "out_channels", "labels", "network",
              "sizes", "config")  # fmt: skip
    missing = [k for k in needed if not isinstance(document, dict) or k not in document]
    if missing:
        raise BundleError(f"{path}: missing {', '.join(missing)} (re-export the model with unet-med export)")
    return document


def _spec(document: Mapping[str, Any], path: Path) -> UNetShapeSpec:
    """The size arithmetic of the exported U-Net, from its architecture (``network``, the
    constructor arguments of :class:`~unet_med.networks.UNet`)."""
    network = document.get("network") or {}
    try:
        return UNetShapeSpec(
            encoder_convs=tuple(int(n) for n in network["convs_per_block"]),
            decoder_convs=tuple(int(n) for n in network["decoder_convs"]),
            head_convs=len(network.get("head_widths") or ()),
            padding=str(network["padding"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"{path}: 'network' is not a UNet architecture ({type(exc).__name__}: {exc})"
        ) from None


class _ExportedNetwork:
    """What both engines share: the U-Net's attributes and the checks of an input tile."""

    def _set_io(self, document: Mapping[str, Any], spec: UNetShapeSpec, model_file: Path) -> None:
        self.spec = spec
        self.spatial_dims = int(document["spatial_dims"])
        self.in_channels = int(document["in_channels"])
        self.out_channels = int(document["out_channels"])
        measured = document["sizes"].get("activation_bytes_per_voxel")
        self.activation_bytes_per_voxel = float(measured) if measured else None
        self.model_file = model_file

    def _check(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the model file for a tile of the wrong rank, channels or size."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.model_file}: expects (batch, {self.in_channels}, {self.spatial_dims} spatial sizes), "
                f"got shape {tuple(x.shape)}"
            )
        try:
            check_input_size([int(s) for s in x.shape[2:]], self.spec)
        except ValueError as exc:
            raise ValueError(f"{self.model_file}: {exc}") from None


class OnnxRuntimeNetwork(_ExportedNetwork):
    """An exported ``model.onnx`` in an ONNX Runtime session, called like the PyTorch U-Net:
    ``logits = network(x)`` with ``x`` a float tensor ``(batch, channels, *spatial)``.

    Args:
        model_file: the ``.onnx`` file.
        document: its ``export.json`` content.
        threads: intra-op threads of the session; default ``torch.get_num_threads()``, so both
            engines use the same cores (``OMP_NUM_THREADS`` sets it).
        device: ``cpu``; ``cuda`` uses ONNX Runtime's CUDA provider where the installed
            onnxruntime has it.
    """

    def __init__(
        self, model_file: str | Path, document: Mapping[str, Any], *, threads: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:  # fmt: skip
        require_onnx("onnxruntime")
        import onnxruntime

        model_file = Path(model_file)
        self._set_io(document, _spec(document, model_file), model_file)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BundleError(f"device {device}: the installed onnxruntime has no CUDA provider "
                                  f"(install onnxruntime-gpu, or use --device cpu)")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(model_file), options, providers=providers)
        except Exception as exc:
            detail = str(exc).strip()[:300]
            raise BundleError(f"{model_file}: ONNX Runtime cannot load it ({detail})") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, out_channels, *output)`` for a tile batch of a legal size.

        Raises:
            ValueError: naming the model file, the size and the nearest legal sizes.
        """
        self._check(x)
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(logits).to(x.device)


class TorchScriptNetwork(_ExportedNetwork, nn.Module):
    """An exported ``model.ts`` (``torch.jit.script`` of the U-Net), with the size checks that
    the scripted ``forward`` skips.

    Args:
        model_file: the ``.ts`` file.
        document: its ``export.json`` content.
        device: where the module runs.
    """

    def __init__(
        self, model_file: str | Path, document: Mapping[str, Any], *, device: str | torch.device = "cpu"
    ) -> None:
        nn.Module.__init__(self)
        model_file = Path(model_file)
        self._set_io(document, _spec(document, model_file), model_file)
        try:
            self.module = torch.jit.load(str(model_file), map_location=torch.device(device)).eval()
        except Exception as exc:
            raise BundleError(f"{model_file}: not a TorchScript model ({str(exc).strip()[:300]})") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.module(x)


def load_export(
    folder: str | Path,
    *,
    engine: str | None = None,
    device: str | None = None,
    tta: bool = False,
    overrides: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> InferenceBundle:
    """An export folder as an :class:`InferenceBundle`: the network in ``engine`` (default: the
    export's own, ``onnxruntime`` for ONNX, ``torchscript`` for TorchScript), the preprocessing,
    inferer and post-processing instantiated from ``export.json``'s ``config`` (with
    ``overrides`` of its ids, e.g. ``{"inferer#memory_budget_mb": 4096}``).

    Raises:
        BundleError: a missing or bad export, an engine that does not match the exported format,
            missing ONNX packages.
    """
    from monai.bundle import ConfigParser

    from unet_med.inference.bundle_loading import _without_loading
    from unet_med.inference.postprocessing import postprocessing_transforms
    from unet_med.inferers import OverlapTileInferer

    folder = Path(folder)
    document = read_export(folder)
    fmt = document["format"]
    engine = engine or document.get("engine") or ("onnxruntime" if fmt == "onnx" else "torchscript")
    if engine not in ENGINES:
        raise BundleError(f"unknown engine {engine!r} for an exported model; choose one of {ENGINES}")
    if _ENGINE_FORMAT[engine] != fmt:
        raise BundleError(f"{folder}: holds a {fmt} export, which the {engine} engine cannot run "
                          f"(export again with --format {_ENGINE_FORMAT[engine]})")
    model_file = folder / document["model_file"]
    if not model_file.is_file():
        raise BundleError(f"{folder}: the exported model {document['model_file']} is missing")
    dev = torch.device(device or "cpu")
    if engine == "onnxruntime":
        network: Any = OnnxRuntimeNetwork(model_file, document, threads=threads, device=dev)
    else:
        network = TorchScriptNetwork(model_file, document, device=dev).to(dev)
    parser = ConfigParser(dict(document["config"]))
    for key, value in (overrides or {}).items():
        parser[key] = value
    try:
        preprocessing = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        postprocessing = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
    except Exception as exc:
        raise BundleError(f"{folder / EXPORT_FILE}: 'config' cannot be instantiated: "
                          f"{type(exc).__name__}: {exc}") from None
    if tta:
        if not isinstance(inferer, OverlapTileInferer):
            raise BundleError(
                f"--tta needs an OverlapTileInferer, {folder / EXPORT_FILE} has {type(inferer).__name__}"
            )
        inferer.tta_flips = True
    if postprocessing is None:
        postprocessing = postprocessing_transforms(preprocessing=preprocessing)
    source = document.get("source") or {}
    return InferenceBundle(
        name=str(source.get("bundle", folder.name)),
        version=str(source.get("bundle_version", "0")),
        network=network,
        inferer=inferer,
        preprocessing=_without_loading(preprocessing),
        postprocessing=postprocessing,
        device=dev,
        labels={int(k): str(v) for k, v in document["labels"].items()},
        spatial_dims=int(document["spatial_dims"]),
        in_channels=int(document["in_channels"]),
        checkpoints=(model_file,),
        plan=document.get("plan"),
        plan_file=None,
    )

