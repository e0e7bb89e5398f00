"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) for valid-convolution U-Nets.

A valid U-Net's output tile is smaller than its input tile by a fixed context margin on each
side. MONAI's ``sliding_window_inference`` treats a smaller output as a zoomed window, so it
cannot place these centre-cropped outputs; :class:`OverlapTileInferer` does:

- the image is extended by the network's context margin with *mirrored* content (the paper's
  extrapolation of missing context), read tile by tile straight from the unpadded image, so the
  padded image is never materialised;
- output tiles are laid on a grid whose step is a multiple of the network's pooling period
  (``2 ** poolings``), so the max pools of every tile see the same grid as a one-pass
  prediction of the whole padded image. A valid U-Net's output size is not a multiple of its
  pooling period (388 = 24 x 16 + 4 for the paper's 572 tile), so neighbouring tiles share the
  remainder (4 voxels there); those voxels are computed identically by both tiles. The stitched
  result therefore equals the one-pass prediction of the whole mirror-padded image up to float
  rounding, and no overlap is needed;
- optional extra overlap with Gaussian (or constant) blending, ``sw_batch_size`` windows per
  network call, windows on ``sw_device`` and the stitched output on ``device``;
- optional flip test-time augmentation: the mean of the logits predicted for flipped tiles;
- optional mixed precision (``torch.autocast`` to bfloat16 or float16, logits stitched in float32)
  and channels-last windows, the levers that pay on a GPU (``docs/BENCHMARKS.md``).

Same-padding networks (``spec.padding == "same"``) have margin 0 and the inferer behaves like
an ordinary sliding window. Networks without a ``spec`` (e.g. MONAI's ``BasicUNet``) are
treated as same-size networks with margin 0 and pooling period 1.

Peak memory model (bytes): the stitched output buffer ``B x C_out x prod(image) x 4`` (plus
``prod(image) x 4`` for the weight map when tiles are blended), plus one window batch: its
input tiles, the network's activations and its output tiles. Nothing else scales with the
image: the input is read tile by tile without a padded copy.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import compute_importance_map
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from unet_med.networks.shapes import UNetShapeSpec, context_margin, min_input_size, valid_output_size

__all__ = [
    "OverlapTileInferer",
    "PeakMemory",
    "TilePlan",
    "available_memory_mb",
    "default_memory_budget_mb",
    "mirror_indices",
    "network_spec",
]

PADDING_MODES = ("reflect", "symmetric", "replicate")
BLEND_MODES = ("constant", "gaussian")
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MEMORY_BUDGET_MB = 1024.0  # the default off the CPU and GPU, and the least on the CPU
CPU_MEMORY_BUDGET_MB = 2048.0  # the most the default grows to on the CPU
# The budget counts the window batch as PeakMemory sees it; a CPU process's resident peak was
# measured at 2.5-3x that (oneDNN's buffers, allocator), plus the scans: one eighth of the
# available memory leaves room for it.
CPU_MEMORY_FRACTION = 1 / 8
# the share of predicted voxels a larger default budget must save to be used on the CPU (measured:
# 11% fewer voxels gave no faster prediction for a two-pooling 3D U-Net, 44% fewer gave 1.45x)
MIN_VOXEL_SAVING = 0.2
CUDA_BUDGET_FRACTION = 0.5
CUDA_BUDGET_CAP_MB = 16384.0


def available_memory_mb() -> float | None:
    """``MemAvailable`` of ``/proc/meminfo`` in MiB (memory the kernel can hand out without
    swapping), else free physical pages; None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (AttributeError, OSError, ValueError):
        return None


def default_memory_budget_mb(device: str | torch.device | None = None) -> float:
    """The largest window-batch budget (MiB) an :class:`OverlapTileInferer` without one may use.

    - CPU (and ``None``): an eighth of the available memory, at least 1024 and at most 2048 MiB
      (bigger tiles repeat less context margin: 1.45x faster prediction for a three-pooling 3D
      U-Net on a 512 x 512 x 120 CT at 2048 than at 1024 MiB; docs/BENCHMARKS.md section 5). The
      inferer takes it only where it saves enough compute (:data:`MIN_VOXEL_SAVING`).
    - CUDA: half of the memory free on the GPU when the tiles are planned (counting the blocks
      PyTorch's caching allocator holds but no tensor uses as free; the stitched output and
      cuDNN's workspaces live beside the window), at most 16 GiB: by then the context margins are
      a small share of a tile. A budget sized for a CPU cut a GPU's prediction into hundreds of
      small tiles, each paying the margin again (484 tiles instead of 1 for a 256x256x128 volume
      at the 3D bundle's width: 11x slower; docs/BENCHMARKS.md section 7).
    - other devices: :data:`DEFAULT_MEMORY_BUDGET_MB`.
    """
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        device = torch.device(device)
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return min(CUDA_BUDGET_FRACTION * free / 2**20, CUDA_BUDGET_CAP_MB)
    if kind != "cpu":
        return DEFAULT_MEMORY_BUDGET_MB
    available = available_memory_mb()
    if available is None:
        return DEFAULT_MEMORY_BUDGET_MB
    return float(min(CPU_MEMORY_BUDGET_MB, max(DEFAULT_MEMORY_BUDGET_MB, available * CPU_MEMORY_FRACTION)))


def mirror_indices(length: int, start: int, size: int, mode: str = "reflect") -> torch.Tensor:
    """Source indices in ``[0, length)`` for positions ``start .. start + size - 1`` of an axis
    extended beyond both ends.

    ``reflect`` mirrors about the edge voxel (``dcb|abcd|cba``), ``symmetric`` repeats it
    (``cba|abcd|dcb``), ``replicate`` repeats the edge value. Reflection is periodic, so any
    padding works even when the axis is shorter than the margin (the same as ``numpy.pad``'s
    repeated reflection); an axis of length 1 is replicated. Written here rather than with
    ``torch.nn.functional.pad`` because that refuses pads >= the axis length and would
    materialise the whole padded image.
    """
    pos = torch.arange(start, start + size)
    if mode == "replicate" or length == 1:
        return pos.clamp(0, length - 1)
    if mode == "reflect":
        period = 2 * (length - 1)
        q = pos.remainder(period)
        return torch.where(q < length, q, period - q)
    if mode == "symmetric":
        period = 2 * length
        q = pos.remainder(period)
        return torch.where(q < length, q, period - 1 - q)
    raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {mode!r}")


def network_spec(network: Callable) -> UNetShapeSpec | None:
    """The :class:`UNetShapeSpec` of a U-Net, looking through DDP/DataParallel and
    ``torch.compile`` wrappers; ``None`` for networks without one."""
    for _ in range(4):
        spec = getattr(network, "spec", None)
        if isinstance(spec, UNetShapeSpec):
            return spec
        inner = getattr(network, "module", None) or getattr(network, "_orig_mod", None)
        if inner is None:
            return None
        network = inner
    return None


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut into tiles (all sizes in voxels, one entry per spatial axis).

    Attributes:
        image_size: spatial size of the image.
        input_tile: network input tile (a legal size for the network).
        output_tile: network output tile (``input_tile - 2 * margin``).
        margin: context voxels consumed on each side of the output tile.
        stride: step between neighbouring output tiles (a multiple of the pooling period).
        starts: output-tile start positions in image coordinates, per axis; the input tile of
            an output tile starting at ``s`` starts at ``s - margin``.
    """

    image_size: tuple[int, ...]
    input_tile: tuple[int, ...]
    output_tile: tuple[int, ...]
    margin: tuple[int, ...]
    stride: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]

    @property
    def num_tiles(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def tile_starts(self) -> Iterator[tuple[int, ...]]:
        """Output-tile start positions (image coordinates), in C order."""
        return itertools.product(*self.starts)


class _Geometry:
    """A network's input/output size relation along ``spatial_dims`` axes."""

    def __init__(self, network: Callable, spatial_dims: int) -> None:
        self.spec = network_spec(network)
        self.spatial_dims = spatial_dims
        if self.spec is None:
            self.margin = (0,) * spatial_dims
            self.period = 1
        else:
            self.margin = context_margin(self.spec) * spatial_dims
            self.period = 2**self.spec.poolings

    def input_for_output(self, output_size: Sequence[int]) -> tuple[int, ...]:
        if self.spec is None:
            return tuple(int(s) for s in output_size)
        return min_input_size(tuple(output_size), self.spec)

    def output_for_input(self, input_size: Sequence[int]) -> tuple[int, ...]:
        if self.spec is None:
            return tuple(int(s) for s in input_size)
        return valid_output_size(tuple(input_size), self.spec)


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensors created by the operations run inside it.

    Written here because PyTorch reports peak memory only for CUDA (``max_memory_allocated``);
    this works on every device, including ``meta``. A tensor counts from the operation that
    creates it until its Python object is collected (views and in-place results are not new).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t._is_view() and id(t) not in self._sizes:
                size = t.numel() * t.element_size()
                self._sizes[id(t)] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, id(t))
        return out


class OverlapTileInferer(Inferer):
    """Overlap-tile sliding-window inference for valid (and same) padding U-Nets.

    Returns logits with the spatial size of ``inputs`` (a ``MetaTensor`` keeps the input's
    metadata, so ``monai.transforms.Invertd`` can undo the preprocessing afterwards).

    Args:
        output_tile_size: wanted network output tile in voxels, one int for every axis or one per
            axis; ``None``, 0 or -1 on an axis means the whole axis. Rounded up to a legal tile and
            capped at the image. ``None`` (the default) picks the tile from ``memory_budget_mb``.
        memory_budget_mb: MiB allowed for one window batch (input tiles, activations, output
            tiles) when ``output_tile_size`` is ``None``. Default (:func:`default_memory_budget_mb`
            of the windows' device): on a GPU half of its free memory, at most 16 GiB; on the CPU
            1024, or up to 2048 when the larger tiles cut the voxels predicted by at least a fifth
            (:data:`MIN_VOXEL_SAVING`). The peak bytes per voxel
            are measured once per network by tracking live tensors through a forward pass on a
            small tile (on the ``meta`` device: no compute).
        overlap: fraction (0 <= overlap < 1) of the output tile shared by neighbouring tiles,
            on top of the few voxels that the pooling grid makes them share anyway.
        blend_mode: ``"constant"`` or ``"gaussian"`` weighting of overlapping tiles.
        sigma_scale: Gaussian sigma as a fraction of the output tile (MONAI's default 0.125).
        sw_batch_size: windows per network call.
        sw_device: device the windows run on; default the network's parameter device.
        device: device of the stitched output; default the device of ``inputs``.
        tta_flips: ``True`` for the mean over all ``2 ** spatial_dims`` flip combinations, or a
            list of spatial-axis tuples (0-based, ``()`` is the unflipped image).
        padding_mode: border extrapolation, ``"reflect"`` (the paper's mirroring),
            ``"symmetric"`` or ``"replicate"``.
        progress: show a tqdm bar over window batches.
        precision: ``"float32"`` (default), or ``"bfloat16"``/``"float16"`` to run the network under
            ``torch.autocast`` on the windows' device; the logits are stitched in float32. Pays on
            GPUs with tensor cores; on CPUs without bfloat16 units it is slower.
        channels_last: hand the network channels-last windows (``torch.channels_last`` /
            ``channels_last_3d``), the layout cuDNN's fastest convolutions use.
    """

    def __init__(
        self,
        output_tile_size: int | Sequence[int | None] | None = None,
        *,
        memory_budget_mb: float | None = None,
        overlap: float = 0.0,
        blend_mode: str = "constant",
        sigma_scale: float = 0.125,
        sw_batch_size: int = 1,
        sw_device: str | torch.device | None = None,
        device: str | torch.device | None = None,
        tta_flips: bool | Sequence[Sequence[int]] = False,
        padding_mode: str = "reflect",
        progress: bool = False,
        precision: str = "float32",
        channels_last: bool = False,
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if blend_mode not in BLEND_MODES:
            raise ValueError(f"blend_mode must be one of {BLEND_MODES}, got {blend_mode!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        if output_tile_size is not None and memory_budget_mb is not None:
            raise ValueError("give output_tile_size or memory_budget_mb, not both")
        if memory_budget_mb is not None and memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        self.output_tile_size = output_tile_size
        self.memory_budget_mb = memory_budget_mb
        self.overlap = float(overlap)
        self.blend_mode = blend_mode
        self.sigma_scale = float(sigma_scale)
        self.sw_batch_size = int(sw_batch_size)
        self.sw_device = None if sw_device is None else torch.device(sw_device)
        self.device = None if device is None else torch.device(device)
        self.tta_flips = tta_flips
        self.padding_mode = padding_mode
        self.progress = progress
        self.precision = precision
        self.channels_last = bool(channels_last)
        self._bytes_per_voxel: dict[tuple[int, int, int], float] = {}

    # ------------------------------------------------------------------ planning
    def plan(
        self,
        image_size: Sequence[int],
        network: Callable,
        *,
        in_channels: int = 1,
        sw_device: torch.device | None = None,
    ) -> TilePlan:
        """The tiles that :meth:`__call__` predicts for an image of ``image_size`` voxels."""
        image_size = tuple(int(s) for s in image_size)
        if any(s < 1 for s in image_size):
            raise ValueError(f"image has an empty spatial axis: size {image_size}")
        geo = _Geometry(network, len(image_size))
        if self.output_tile_size is None and self.memory_budget_mb is not None:
            budget = self.memory_budget_mb * 2**20
            wanted = self._tile_from_budget(image_size, geo, network, in_channels, budget, sw_device)
        elif self.output_tile_size is None:
            wanted = self._tile_from_default_budget(image_size, geo, network, in_channels, sw_device)
        else:
            wanted = self._requested_tile(image_size, geo)
        input_tile = geo.input_for_output(wanted)
        output_tile = geo.output_for_input(input_tile)
        strides, starts = [], []
        for n, out in zip(image_size, output_tile):
            if out >= n:
                strides.append(out)
                starts.append((0,))
                continue
            step = self._step(out, geo.period)
            count = -(-(n - out) // step) + 1
            strides.append(step)
            starts.append(tuple(i * step for i in range(count)))
        return TilePlan(image_size, input_tile, output_tile, geo.margin, tuple(strides), tuple(starts))

    def _requested_tile(self, image_size: tuple[int, ...], geo: _Geometry) -> tuple[int, ...]:
        dims = len(image_size)
        req = self.output_tile_size
        req = [req] * dims if req is None or isinstance(req, int) else list(req)
        if len(req) != dims:
            raise ValueError(f"output_tile_size has {len(req)} entries for a {dims}D image: {req}")
        wanted = []
        for n, r in zip(image_size, req):
            r = n if r is None or r <= 0 else int(r)
            # a tile smaller than the pooling period cannot step along the pooling grid
            wanted.append(n if r >= n else min(max(r, geo.period), n))
        return tuple(wanted)

    def _step(self, output: int, period: int) -> int:
        """Grid step for an output tile: the overlap taken off, a multiple of the pooling period."""
        return max(period, int(output * (1.0 - self.overlap)) // period * period)

    def _axis_options(self, n: int, geo: _Geometry, max_tiles: int = 32) -> list[tuple[int, int, int]]:
        """(tile count, output tile, input tile) along an axis of ``n`` voxels: for each count,
        the smallest legal tile that covers the axis with that many tiles."""
        best: dict[int, tuple[int, int, int]] = {}
        for count in range(1, max_tiles + 1):
            out = n if count == 1 else max(geo.period, -(-n // count))
            while count > 1 and (count - 1) * self._step(out, geo.period) + out < n:
                out += 1
            size_in = geo.input_for_output((out,))[0]
            size_out = geo.output_for_input((size_in,))[0]
            real = 1 if size_out >= n else -(-(n - size_out) // self._step(size_out, geo.period)) + 1
            if real not in best or size_in < best[real][2]:
                best[real] = (real, out, size_in)
            if out <= geo.period:
                break
        return sorted(best.values())

    def _tile_from_default_budget(
        self,
        image_size: tuple[int, ...],
        geo: _Geometry,
        network: Callable,
        in_channels: int,
        sw_device: torch.device | None,
    ) -> tuple[int, ...]:
        """On a GPU the output tile for its :func:`default_memory_budget_mb`. Elsewhere the tile for
        :data:`DEFAULT_MEMORY_BUDGET_MB`, or for the larger
        :func:`default_memory_budget_mb` of the device when that cuts the input voxels predicted
        (the compute, context margins included) by at least :data:`MIN_VOXEL_SAVING`: a bigger
        window costs memory and, on the CPU, some speed per voxel (13% more time per voxel for a
        23M- than for a 7M-voxel tile of the 3D U-Net), so it is only taken where it pays."""
        device = sw_device or _parameter_device(network) or torch.device("cpu")
        larger_mb = default_memory_budget_mb(device)
        if device.type == "cuda":  # a GPU gains from the largest tile its memory allows
            return self._tile_from_budget(image_size, geo, network, in_channels, larger_mb * 2**20, sw_device)
        small = self._tile_from_budget(
            image_size, geo, network, in_channels, DEFAULT_MEMORY_BUDGET_MB * 2**20, sw_device
        )
        if larger_mb <= DEFAULT_MEMORY_BUDGET_MB:
            return small
        large = self._tile_from_budget(image_size, geo, network, in_channels, larger_mb * 2**20, sw_device)

        def predicted_voxels(wanted: tuple[int, ...]) -> int:
            input_tile = geo.input_for_output(wanted)
            output_tile = geo.output_for_input(input_tile)
            counts = [
                1 if o >= n else -(-(n - o) // self._step(o, geo.period)) + 1
                for n, o in zip(image_size, output_tile)
            ]
            return math.prod(counts) * math.prod(input_tile)

        saving = 1.0 - predicted_voxels(large) / predicted_voxels(small)
        return large if saving >= MIN_VOXEL_SAVING else small

    def _tile_from_budget(
        self,
        image_size: tuple[int, ...],
        geo: _Geometry,
        network: Callable,
        in_channels: int,
        budget_bytes: float,
        sw_device: torch.device | None,
    ) -> tuple[int, ...]:
        """The output tile that predicts the image with the fewest input voxels in total (the
        compute, context margins included) while one window batch fits ``budget_bytes``; the
        smallest window when none fits."""
        per_voxel = self._activation_bytes_per_voxel(network, geo, in_channels, sw_device)
        options = [self._axis_options(n, geo) for n in image_size]
        best, best_key = None, None
        for combo in itertools.product(*options):
            window = math.prod(o[2] for o in combo)
            memory = self.sw_batch_size * window * per_voxel
            fits = memory <= budget_bytes
            key = (not fits, math.prod(o[0] for o in combo) * window if fits else memory)
            if best_key is None or key < best_key:
                best, best_key = combo, key
        assert best is not None
        return tuple(o[1] for o in best)

    def _activation_bytes_per_voxel(
        self, network: Callable, geo: _Geometry, in_channels: int, sw_device: torch.device | None
    ) -> float:
        """Peak bytes of one window per input-tile voxel (input, live activations, output).

        A network with an ``activation_bytes_per_voxel`` attribute (an exported one, whose runtime
        PeakMemory cannot see) gives the figure itself. Otherwise measured once per network by
        :class:`PeakMemory` on a small tile, on the ``meta`` device
        when the network can be copied there (shapes only, no compute), else on ``sw_device``.
        The peak per voxel barely depends on the tile size (within 5% from 100^3 to 188^3 for the
        3D U-Net), and 10% is added for allocator slack.
        """
        measured = getattr(network, "activation_bytes_per_voxel", None)
        if measured:  # an exported network (ONNX Runtime, TorchScript) carries the figure of its source
            return float(measured)
        key = (id(network), in_channels, geo.spatial_dims)
        if key in self._bytes_per_voxel:
            return self._bytes_per_voxel[key]
        probe_size = geo.input_for_output((max(geo.period, 8),) * geo.spatial_dims)
        dtype = _parameter_dtype(network) or torch.float32
        candidates: list[tuple[Callable, torch.device]] = []
        if isinstance(network, nn.Module):
            try:
                candidates.append((copy.deepcopy(network).to("meta"), torch.device("meta")))
            except Exception:  # networks that cannot be copied or moved: measure for real
                pass
        candidates.append((network, sw_device or _parameter_device(network) or torch.device("cpu")))
        peak = None
        for net, device in candidates:
            tracker = PeakMemory()
            try:
                with torch.no_grad():
                    probe = torch.zeros((1, in_channels, *probe_size), device=device, dtype=dtype)
                    with tracker:
                        net(probe)
            except Exception:
                if device.type == "meta":
                    continue
                raise
            peak = tracker.peak + probe.numel() * probe.element_size()
            break
        value = 1.1 * float(peak) / math.prod(probe_size)
        self._bytes_per_voxel[key] = value
        return value

    # ------------------------------------------------------------------ inference
    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Predict logits ``(B, C_out, *spatial)`` for ``inputs`` ``(B, C_in, *spatial)``."""
        if inputs.ndim not in (4, 5):
            raise ValueError(
                f"inputs must be (batch, channels, *spatial) with 2 or 3 spatial axes, got shape "
                f"{tuple(inputs.shape)}"
            )
        image = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        sw_device = self.sw_device or _parameter_device(network) or image.device
        out_device = self.device or image.device
        spatial = tuple(image.shape[2:])
        dims = len(spatial)
        plan = self.plan(spatial, network, in_channels=image.shape[1], sw_device=sw_device)
        flips = self._flip_sets(dims)
        blend = self.overlap > 0 or self.blend_mode == "gaussian"
        weights = None
        if blend:
            weights = compute_importance_map(
                plan.output_tile, mode=self.blend_mode, sigma_scale=self.sigma_scale, device=out_device
            )

        output: torch.Tensor | None = None
        weight_sum: torch.Tensor | None = None
        jobs = [(b, s) for b in range(image.shape[0]) for s in plan.tile_starts()]
        batches = [jobs[i : i + self.sw_batch_size] for i in range(0, len(jobs), self.sw_batch_size)]
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="tiles", unit="batch", leave=False)
        with torch.no_grad():
            for batch in batches:
                windows = torch.stack(
                    [self._read_window(image[b], tuple(s - m for s, m in zip(st, plan.margin)), plan)
                     for b, st in batch]
                ).to(sw_device, non_blocking=True)
                pred = self._predict(windows, network, flips, *args, **kwargs)
                if tuple(pred.shape[2:]) != plan.output_tile:
                    raise ValueError(
                        f"network turned input tile {plan.input_tile} into {tuple(pred.shape[2:])}, "
                        f"expected {plan.output_tile} from its size arithmetic"
                    )
                pred = pred.to(out_device)
                if output is None:
                    dtype = torch.promote_types(pred.dtype, torch.float32)
                    shape = (image.shape[0], pred.shape[1], *spatial)
                    output = torch.zeros(shape, dtype=dtype, device=out_device)
                    if blend:
                        weight_sum = torch.zeros((1, *spatial), dtype=dtype, device=out_device)
                for k, (b, st) in enumerate(batch):
                    dst = tuple(slice(s, min(s + o, n)) for s, o, n in zip(st, plan.output_tile, spatial))
                    src = tuple(slice(0, d.stop - d.start) for d in dst)
                    if weights is None:
                        # exact overwrite: voxels shared by neighbours are computed identically
                        output[(b, slice(None), *dst)] = pred[(k, slice(None), *src)]
                    else:
                        w = weights[src]
                        output[(b, slice(None), *dst)] += pred[(k, slice(None), *src)] * w
                        if b == 0:
                            weight_sum[(0, *dst)] += w
        assert output is not None
        if weight_sum is not None:
            output /= weight_sum
        if isinstance(inputs, MetaTensor):
            meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False)
            return convert_to_dst_type(output, meta, device=out_device)[0]
        return output

    def _flip_sets(self, dims: int) -> list[tuple[int, ...]]:
        if self.tta_flips is True:
            return [c for r in range(dims + 1) for c in itertools.combinations(range(dims), r)]
        if not self.tta_flips:
            return [()]
        sets = [tuple(int(a) for a in axes) for axes in self.tta_flips]
        for axes in sets:
            if any(a < 0 or a >= dims for a in axes):
                raise ValueError(f"tta_flips axis out of range for a {dims}D image: {axes}")
        return sets

    def _predict(
        self,
        windows: torch.Tensor,
        network: Callable,
        flips: list[tuple[int, ...]],
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Network logits for a window batch, averaged over flipped copies. A valid U-Net crops
        its output symmetrically, so flipping the output back re-aligns it with the tile."""
        total = None
        amp_dtype = PRECISIONS[self.precision]
        layout = torch.channels_last if windows.ndim == 4 else torch.channels_last_3d
        for axes in flips:
            dims = [a + 2 for a in axes]
            x = windows.flip(dims) if dims else windows
            if self.channels_last:
                x = x.contiguous(memory_format=layout)
            with torch.autocast(windows.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                y = network(x, *args, **kwargs)
            y = y.float() if amp_dtype is not None else y
            y = y.flip(dims) if dims else y
            total = y if total is None else total.add_(y)
        assert total is not None
        return total / len(flips) if len(flips) > 1 else total

    def _read_window(self, image: torch.Tensor, start: Sequence[int], plan: TilePlan) -> torch.Tensor:
        """One input tile ``(C, *input_tile)`` starting at ``start`` (image coordinates, may be
        negative): a view where it lies inside the image, mirrored indices where it does not."""
        region = image
        for axis, (a, size, n) in enumerate(zip(start, plan.input_tile, image.shape[1:])):
            dim = axis + 1
            if a >= 0 and a + size <= n:
                region = region.narrow(dim, a, size)
                continue
            idx = mirror_indices(n, a, size, self.padding_mode)
            lo, hi = int(idx.min()), int(idx.max())
            region = region.narrow(dim, lo, hi - lo + 1).index_select(dim, (idx - lo).to(image.device))
        return region


def _parameter_device(network: Callable) -> torch.device | None:
    if isinstance(network, nn.Module):
        for p in network.parameters():
            return p.device
    return None


def _parameter_dtype(network: Callable) -> torch.dtype | None:
    if isinstance(network, nn.Module):
        for p in network.parameters():
            return p.dtype
    return None
