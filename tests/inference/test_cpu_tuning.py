"""CPU settings of batch inference: glibc keeps freed blocks for reuse (no page faults for the next
tile), 3D convolution weights in channels-last layout (same logits), applied by BatchSegmenter."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from unet_med.inference import BatchSegmenter, cpu_tuning, load_bundle
from unet_med.inference.cpu_tuning import channels_last_network
from unet_med.networks import UNet


def _conv3d_weights(network: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in network.modules() if isinstance(m, torch.nn.Conv3d)]


def test_channels_last_network_keeps_the_logits_of_a_3d_unet():
    torch.manual_seed(0)
    net = UNet(3, 1, 3, widths=(2, 4), norm="none").eval()
    x = torch.randn(1, 1, 44, 48, 52)
    with torch.no_grad():
        before = net(x)
        converted = channels_last_network(net)
        after = converted(x)
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in _conv3d_weights(converted))
    assert not all(w.is_contiguous() for w in _conv3d_weights(converted))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert torch.equal(after.argmax(1), before.argmax(1))


def test_channels_last_network_leaves_2d_networks_and_other_callables_alone():
    net2d = UNet(2, 1, 2, widths=(2, 4), norm="none")
    assert channels_last_network(net2d) is net2d
    assert all(p.is_contiguous() for p in net2d.parameters())

    def runtime(x):  # an engine that is not a module (ONNX Runtime)
        return x

    assert channels_last_network(runtime) is runtime


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_retain_freed_memory_reuses_a_freed_block_without_new_page_faults():
    # In a child process: the setting is process-wide. 64 MiB is above glibc's largest dynamic
    # mmap threshold (32 MiB), so without the setting the block is mapped afresh and faulted in.
    # The module is loaded from its file: the package's imports (MONAI) would take seconds.
    script = textwrap.dedent(
        """
        import importlib.util, resource, sys
        import torch

        spec = importlib.util.spec_from_file_location("cpu_tuning", sys.argv[1])
        cpu_tuning = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cpu_tuning)
        retain_freed_memory = cpu_tuning.retain_freed_memory

        def faults_of_a_second_block():
            a = torch.ones(2**24)  # 64 MiB, like a layer's activations (numpy would ask for huge pages)
            del a
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            b = torch.ones(2**24)
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        default = [faults_of_a_second_block() for _ in range(6)][-1]
        assert retain_freed_memory()
        # the first cycles grow the heap (an aligned request does not fit the freed aligned block
        # until neighbours merge), then freed memory is reused
        print(default, [faults_of_a_second_block() for _ in range(6)][-1])
        """
    )
    command = [sys.executable, "-c", script, cpu_tuning.__file__]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    default, retained = map(int, proc.stdout.split())
    assert default >= 2**26 // 4096 // 2  # half of its 4 KiB pages at least
    assert retained < default // 10


def test_batch_segmenter_tunes_a_cpu_bundle_unless_told_not_to(infer_bundle):
    tuned = BatchSegmenter(load_bundle(infer_bundle, device="cpu"), qc=False)
    weights = _conv3d_weights(tuned.bundle.network)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in weights)
    plain = BatchSegmenter(load_bundle(infer_bundle, device="cpu"), qc=False, cpu_tuning=False)
    assert all(w.is_contiguous() for w in _conv3d_weights(plain.bundle.network))
