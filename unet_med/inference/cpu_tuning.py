"""Process and network settings that make batch inference faster on a CPU.

Each one was kept because ``bench.scan`` measured a gain on a full-size CT (docs/BENCHMARKS.md,
section 5); :class:`~unet_med.inference.BatchSegmenter` applies them when its bundle runs on the
CPU (``cpu_tuning=False`` leaves the process and the network as they are).

- :func:`retain_freed_memory`: glibc hands every freed block above its mmap threshold (at most
  32 MiB by default) back to the kernel, and the kernel zeroes every page of the next such block
  when it is first touched. A 3D U-Net allocates each layer's activations afresh for every tile
  (hundreds of MiB each), so without this a third of a tile's CPU time went to the kernel's page
  faults. With it, freed blocks stay in the process and are reused; the process keeps its peak
  resident memory until it exits (it needs it again for the next tile and scan). Written with
  ``ctypes.mallopt`` because neither PyTorch nor the standard library exposes the setting; a
  no-op outside glibc.
- :func:`channels_last_network`: 3D convolutions with ``torch.channels_last_3d`` weights run
  oneDNN's channels-last kernels on the CPU (the input follows the weights' format), measured
  1.3-1.5x faster per tile than the default layout for the 3D U-Net. Outputs are the same up to
  float rounding.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Any

import torch
from torch import nn

__all__ = ["channels_last_network", "retain_freed_memory"]

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse in this process: no ``mmap`` for
    large blocks (``M_MMAP_MAX = 0``) and no trimming of the heap (``M_TRIM_THRESHOLD = -1``),
    both documented in ``mallopt(3)``. Process-wide and idempotent.

    Returns:
        True when both settings took effect, False where the C library is not glibc (nothing
        changed) or refused them.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Large blocks of threads other than the main one still come from mmap when their arena
    # cannot grow (glibc falls back to it), so this cannot make an allocation fail.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


def _is_scripted(network: nn.Module) -> bool:
    return any(isinstance(m, torch.jit.ScriptModule) for m in network.modules())


def channels_last_network(network: Any) -> Any:
    """``network`` with its 3D convolution weights in ``torch.channels_last_3d`` (in place, as
    ``nn.Module.to`` does), so that oneDNN runs its channels-last kernels on the CPU. Networks
    without 3D convolutions, TorchScript modules and callables that are not modules (ONNX
    Runtime) are returned unchanged."""
    if not isinstance(network, nn.Module) or _is_scripted(network):
        return network
    if not any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) for m in network.modules()):
        return network
    return network.to(memory_format=torch.channels_last_3d)
