"""A bundle's ``configs/inference.json`` parsed once, with the checkpoint's weights in its network.

The config holds the pieces by id: ``network_def`` (the network), ``inferer`` (normally
:class:`~unet_med.inferers.OverlapTileInferer`), ``preprocessing`` (a dictionary transform on key
``"image"``, applied to the channel-first ``MetaTensor`` that
:func:`~unet_med.data.loading.load_scan` gives; a leading ``LoadImaged``/``EnsureChannelFirstd`` is
dropped because batch inference loads the scans itself), ``postprocessing`` (dictionary transform on
``"pred"``, e.g. :func:`~unet_med.inference.postprocessing.postprocessing_transforms`; default:
argmax and inversion of the preprocessing), ``device`` and optionally ``class_names`` or ``labels``.

A checkpoint trained by a bundle names its architecture in ``network.json`` beside it, which
replaces the config's ``network_def`` so the network fits the weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BundleError", "InferenceBundle", "load_bundle", "load_checkpoint_state"]

# Prefixes that wrappers put before every parameter name: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class BundleError(ValueError):
    """A bundle that cannot segment: missing folder, config or ids, a checkpoint that is missing,
    not loadable with ``weights_only=True`` or does not fit the network. The message names the file."""


@dataclass
class InferenceBundle:
    """The parsed pieces of a bundle's ``inference.json``, network weights loaded.

    Attributes:
        name, version: from the bundle's ``metadata.json`` (folder name and ``"0"`` without one).
        network: in eval mode on ``device``.
        inferer: called as ``inferer(batch, network)``.
        preprocessing: dictionary transform on ``"image"`` (without loading steps).
        postprocessing: dictionary transform on ``"pred"``.
        device: a ``torch.device``.
        labels: {label value: name}, 0 = background.
        spatial_dims, in_channels: what the network takes.
    """

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
    Wrapper prefixes (``module.`` of DDP, ``_orig_mod.`` of ``torch.compile``) are removed.

    Raises:
        BundleError: missing file, not loadable with ``weights_only=True``, or no state_dict in it.
    """
    import torch
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    if not path.is_file():
        raise BundleError(f"checkpoint not found: {path} (train the bundle first or pass --checkpoint)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(
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
        raise BundleError(
            f"{path}: holds no network state_dict (expected the state_dict itself or a dict with a "
            f"'network' entry; found {found})"
        )
    state = dict(state)
    while any(key.startswith(_WRAPPER_PREFIXES) for key in state):  # nested wrappers: module._orig_mod.
        for prefix in _WRAPPER_PREFIXES:
            consume_prefix_in_state_dict_if_present(state, prefix)
    return state


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
    bundle_dir: str | Path,
    *,
    device: str | None = None,
    checkpoint: str | Path | None = None,
    tta: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> InferenceBundle:
    """Parse ``bundle_dir/configs/inference.json`` (with ``overrides`` {config id: value}) and load
    the checkpoint (default ``bundle_dir/models/model.pt``) into its network.

    Args:
        bundle_dir: the bundle folder.
        device: ``cpu``, ``cuda`` or ``cuda:N``; default: the config's ``device``.
        checkpoint: network weights; a ``network.json`` beside them replaces ``network_def``.
        tta: test-time augmentation (mean over flipped inputs) on an OverlapTileInferer.
        overrides: {config id: value}, applied after ``network.json``.

    Raises:
        BundleError: missing bundle/config/ids, bad checkpoint, ``tta`` without an OverlapTileInferer.
    """
    import torch
    from monai.bundle import ConfigParser

    from unet_med.inference.postprocessing import postprocessing_transforms
    from unet_med.inferers import OverlapTileInferer

    bundle_dir = Path(bundle_dir)
    config = bundle_dir / "configs" / "inference.json"
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder not found: {bundle_dir}")
    if not config.is_file():
        raise BundleError(f"{bundle_dir}: no configs/inference.json")
    checkpoint = Path(checkpoint) if checkpoint is not None else bundle_dir / "models" / "model.pt"
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
            raise BundleError(f"{network_file}: not valid JSON ({exc})") from None
    for key, value in (overrides or {}).items():
        parser[key] = value
    if device is not None:
        parser["device"] = f"$torch.device({device!r})"
    for key in ("network_def", "inferer", "preprocessing"):
        if key not in parser:
            raise BundleError(f"{config}: no '{key}' id (needed: network_def, inferer, preprocessing)")
    try:
        dev = parser.get_parsed_content("device") if "device" in parser else torch.device("cpu")
        network = parser.get_parsed_content("network_def")
        inferer = parser.get_parsed_content("inferer")
        preprocessing = parser.get_parsed_content("preprocessing")
        postprocessing = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
    except Exception as exc:
        raise BundleError(f"{config}: cannot be instantiated: {type(exc).__name__}: {exc}") from None
    dev = torch.device(dev)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise BundleError(
            f"{checkpoint}: weights do not fit the bundle's network_def ({' '.join(lines[:3])[:300]})"
        ) from None
    network = network.to(dev).eval()
    if tta:
        if not isinstance(inferer, OverlapTileInferer):
            raise BundleError(
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
