"""A bundle's ``configs/inference.json`` parsed once, with the checkpoint's weights in its network.

The config holds the pieces by id: ``network_def`` (the network), ``inferer`` (normally
:class:`~unet_med.inferers.OverlapTileInferer`), ``preprocessing`` (a dictionary transform on key
``"image"``, applied to the channel-first ``MetaTensor`` that
:func:`~unet_med.data.loading.load_scan` gives; a leading ``LoadImaged``/``EnsureChannelFirstd`` is
dropped because batch inference loads the scans itself), ``postprocessing`` (dictionary transform on
``"pred"``, e.g. :func:`~unet_med.inference.postprocessing.postprocessing_transforms`; default:
argmax and inversion of the preprocessing), ``device`` and optionally ``class_names`` or ``labels``.

A checkpoint trained by a bundle has two files beside it: ``network.json`` (its architecture),
which replaces the config's ``network_def`` so the network fits the weights, and ``plan.json`` (the
plan training ran with: {bundle config id: value}), whose ids that ``inference.json`` defines are
set on the config, so inference repeats training's preprocessing without any ``--set``. Order:
``inference.json`` < ``network.json`` < ``plan.json`` < the caller's overrides.

Several checkpoints (a list, or a folder: :func:`checkpoint_files`) make an ensemble
(:class:`~unet_med.inference.ensemble.EnsembleNetwork`, the mean of the members' softmax): each
member is rebuilt from its own ``network.json``; their plans must agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "NETWORK_FILE",
    "PLAN_FILE",
    "BundleError",
    "InferenceBundle",
    "checkpoint_files",
    "checkpoint_plan",
    "inference_parser",
    "load_bundle",
    "load_checkpoint_state",
]

# Prefixes that wrappers put before every parameter name: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
NETWORK_FILE = "network.json"  # the architecture of the weights beside it, written by training
PLAN_FILE = "plan.json"  # the plan a training ran with, written by training beside its weights
# Folders a checkpoint folder search does not enter: MLflow artifact stores (the default store of a
# training keeps a copy of models/model.pt under <output_dir>/mlartifacts/) and hidden folders.
_NOT_SEARCHED = ("mlartifacts", "mlruns")


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
        checkpoints: the weights loaded; several for an ensemble (``network`` is then an
            :class:`~unet_med.inference.ensemble.EnsembleNetwork` of them, in this order).
        plan: {config id: value} of ``plan.json`` applied to the config (the ids that
            ``inference.json`` defines; the caller's overrides may have replaced some after it),
            None without a plan file.
        plan_file: the applied ``plan.json`` (the first member's for an ensemble), or None.
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
    checkpoints: tuple[Path, ...] = ()
    plan: dict[str, Any] | None = None
    plan_file: Path | None = None


def checkpoint_files(checkpoint: str | Path | Sequence[str | Path] | None, default: Path) -> list[Path]:
    """The checkpoint files that ``checkpoint`` names, in order: ``default`` for None; a file as
    it is (checked when loaded); a folder as every ``models/model.pt`` below it (the best weights
    of each training run in it, e.g. one per fold; the folder itself may be a ``models`` folder),
    sorted by path, or, when there is none, every ``*.pt`` file directly in it, sorted by name.
    The search skips hidden folders and MLflow artifact folders (``mlartifacts``, ``mlruns``), which
    hold copies of ``models/model.pt``. A list gives the concatenation of its entries.

    Raises:
        BundleError: an empty list, or a folder without checkpoints.
    """
    if checkpoint is None:
        return [default]
    entries = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if not entries:
        raise BundleError("no checkpoint given (an empty list)")
    found: list[Path] = []
    for entry in map(Path, entries):
        if not entry.is_dir():
            found.append(entry)
            continue
        runs = []
        for folder, subfolders, files in os.walk(entry):
            subfolders[:] = sorted(d for d in subfolders if d not in _NOT_SEARCHED and not d.startswith("."))
            if Path(folder).name == "models" and "model.pt" in files:
                runs.append(Path(folder) / "model.pt")
        runs = sorted(runs) or sorted(p for p in entry.glob("*.pt") if p.is_file())
        if not runs:
            raise BundleError(
                f"checkpoint folder {entry} holds no checkpoints (looked for models/model.pt below it, "
                f"then *.pt in it)"
            )
        found.extend(runs)
    return found


def checkpoint_plan(checkpoint: Path) -> tuple[Path, dict[str, Any]] | None:
    """``(file, plan)`` of the ``plan.json`` beside ``checkpoint``, or None without one.

    Raises:
        BundleError: the file is not a JSON object.
    """
    path = checkpoint.parent / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(plan, dict):
        raise BundleError(f"{path}: expected a JSON object of config ids, found {type(plan).__name__}")
    return path, plan


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


def _config_parser(
    config: Path,
    checkpoint: Path,
    plan: tuple[Path, dict[str, Any]] | None,
    overrides: Mapping[str, Any] | None,
    device: str | None,
) -> tuple[Any, dict[str, Any] | None]:
    """``inference.json`` (with ``metadata.json`` as ``_meta_``) with ``network.json``, the plan and
    ``overrides`` set, in that order; returns the parser and the plan ids it applied."""
    from monai.bundle import ConfigParser

    bundle_dir = config.parent.parent
    parser = ConfigParser()
    parser.read_config(str(config))
    meta_file = bundle_dir / "configs" / "metadata.json"
    if meta_file.is_file():
        parser.read_meta(str(meta_file))
    parser["bundle_root"] = str(bundle_dir)
    # A checkpoint trained by a bundle names its architecture in network.json beside it, so the
    # network matches the weights whatever overrides (e.g. --base_width) trained it.
    network_file = checkpoint.parent / NETWORK_FILE
    if network_file.is_file():
        try:
            parser["network_def"] = json.loads(network_file.read_text())
        except ValueError as exc:
            raise BundleError(f"{network_file}: not valid JSON ({exc})") from None
    applied = None
    if plan is not None:
        # the plan also holds training-only ids (batch_size, patch_size, ...) and notes ("_comments_")
        applied = {k: v for k, v in plan[1].items() if not k.startswith("_") and k in parser}
        for key, value in applied.items():
            parser[key] = value
    for key, value in (overrides or {}).items():
        parser[key] = value
    if device is not None:
        parser["device"] = f"$torch.device({device!r})"
    return parser, applied


def inference_parser(
    bundle_dir: str | Path, checkpoint: str | Path, overrides: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any] | None]:
    """The ``ConfigParser`` of ``bundle_dir/configs/inference.json`` as :func:`load_bundle` sets it
    up for one checkpoint (``network.json`` and ``plan.json`` beside it applied, then
    ``overrides``), nothing instantiated; returns it and the plan ids it applied (None without a plan).

    Raises:
        BundleError: no bundle folder or ``inference.json``, a bad ``network.json`` or ``plan.json``.
    """
    bundle_dir, checkpoint = Path(bundle_dir), Path(checkpoint)
    config = bundle_dir / "configs" / "inference.json"
    if not config.is_file():
        raise BundleError(f"{bundle_dir}: no configs/inference.json")
    return _config_parser(config, checkpoint, checkpoint_plan(checkpoint), overrides, None)


def _check_plans_agree(
    checkpoints: Sequence[Path],
    plans: Sequence[tuple[Path, dict[str, Any]] | None],
    applied: Sequence[dict[str, Any] | None],
) -> None:
    """Every ensemble member must have been trained with the preprocessing of the first.

    Raises:
        BundleError: naming both plan files (or the checkpoint without one) and the differing ids.
    """

    def where(i: int) -> str:
        plan = plans[i]
        return str(plan[0]) if plan is not None else f"{checkpoints[i]} (no {PLAN_FILE} beside it)"

    def value(plan: dict[str, Any], key: str) -> str:
        return repr(plan[key]) if key in plan else "unset (inference.json's value)"

    first = applied[0] or {}
    for i in range(1, len(checkpoints)):
        other = applied[i] or {}
        unset = object()
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k, unset) != other.get(k, unset))
        if differ:
            detail = "; ".join(f"{k}: {value(first, k)} vs {value(other, k)}" for k in differ)
            raise BundleError(
                f"ensemble members were trained with different plans: {where(0)} and {where(i)} differ in "
                f"{detail}; every member must use the same preprocessing"
            )


def load_bundle(
    bundle_dir: str | Path,
    *,
    device: str | None = None,
    checkpoint: str | Path | Sequence[str | Path] | None = None,
    tta: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> InferenceBundle:
    """Parse ``bundle_dir/configs/inference.json`` and load the checkpoint (default
    ``bundle_dir/models/model.pt``) into its network; several checkpoints make an ensemble.

    The config gets, in this order: the ``network.json`` beside the checkpoint as ``network_def``,
    the ids of the ``plan.json`` beside it that ``inference.json`` defines (training-only ids and
    keys starting with ``_`` are skipped), then ``overrides``, so explicit overrides win.

    Args:
        bundle_dir: the bundle folder.
        device: ``cpu``, ``cuda`` or ``cuda:N``; default: the config's ``device``.
        checkpoint: network weights: a file, a folder or a list of them
            (:func:`checkpoint_files`). One file loads as one network, exactly as before; two or
            more make an :class:`~unet_med.inference.ensemble.EnsembleNetwork` (mean softmax),
            each member rebuilt from its own ``network.json``.
        tta: test-time augmentation (mean over flipped inputs) on an OverlapTileInferer.
        overrides: {config id: value}, applied after ``network.json`` and ``plan.json``.

    Raises:
        BundleError: missing bundle/config/ids, a bad checkpoint, ``network.json`` or
            ``plan.json``, ``tta`` without an OverlapTileInferer, or ensemble members whose plans,
            shape arithmetic or channels differ (the message names both members' files).
    """
    import torch

    from unet_med.inference.ensemble import EnsembleNetwork
    from unet_med.inference.postprocessing import postprocessing_transforms
    from unet_med.inferers import OverlapTileInferer

    bundle_dir = Path(bundle_dir)
    config = bundle_dir / "configs" / "inference.json"
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder not found: {bundle_dir}")
    if not config.is_file():
        raise BundleError(f"{bundle_dir}: no configs/inference.json")
    checkpoints = checkpoint_files(checkpoint, bundle_dir / "models" / "model.pt")
    states = [load_checkpoint_state(c) for c in checkpoints]
    plans = [checkpoint_plan(c) for c in checkpoints]
    parsers, applied = zip(
        *(_config_parser(config, c, plan, overrides, device) for c, plan in zip(checkpoints, plans))
    )
    _check_plans_agree(checkpoints, plans, applied)
    parser = parsers[0]
    for key in ("network_def", "inferer", "preprocessing"):
        if key not in parser:
            raise BundleError(f"{config}: no '{key}' id (needed: network_def, inferer, preprocessing)")
    try:
        dev = parser.get_parsed_content("device") if "device" in parser else torch.device("cpu")
        networks = [parser.get_parsed_content("network_def")]
        inferer = parser.get_parsed_content("inferer")
        preprocessing = parser.get_parsed_content("preprocessing")
        postprocessing = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
    except Exception as exc:
        raise BundleError(f"{config}: cannot be instantiated: {type(exc).__name__}: {exc}") from None
    for member, member_parser in zip(checkpoints[1:], parsers[1:]):
        try:
            networks.append(member_parser.get_parsed_content("network_def"))
        except Exception as exc:
            raise BundleError(
                f"{member}: the network of this ensemble member cannot be built from {config} and its "
                f"{NETWORK_FILE}: {type(exc).__name__}: {exc}"
            ) from None
    dev = torch.device(dev)
    for net, state, path in zip(networks, states, checkpoints):
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()
            raise BundleError(
                f"{path}: weights do not fit the bundle's network_def ({' '.join(lines[:3])[:300]})"
            ) from None
    if len(networks) == 1:
        network = networks[0]
    else:
        try:
            network = EnsembleNetwork(networks, names=[str(c) for c in checkpoints])
        except ValueError as exc:
            raise BundleError(str(exc)) from None
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
        checkpoints=tuple(checkpoints),
        plan=applied[0],
        plan_file=plans[0][0] if plans[0] is not None else None,
    )
