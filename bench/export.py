"""ONNX Runtime against PyTorch eager on CPU for the same exported network and the same tiles.

The 3D bundle's architecture (``cicek3d``) at its CPU width (base width 8, what the plan picks on
a CPU) is exported with :func:`unet_med.export.export_network` (the code ``unet-med export`` runs)
and timed two ways, both engines with the same intra-op threads (``torch.get_num_threads()``,
set by ``OMP_NUM_THREADS``), interleaved repeat by repeat (:func:`bench.measure.interleaved_seconds`):

* ``tile``: one network call on the tile that :class:`~unet_med.inferers.OverlapTileInferer`
  picks for the volume at its default memory budget;
* ``volume``: the whole overlap-tile inference of a random preprocessed volume (mirror padding,
  tiles, stitching), the PyTorch ``UNet`` against :class:`~unet_med.export.OnnxRuntimeNetwork`
  through the same inferer.

It also reports the largest logit difference and the argmax agreement of the two engines on the
volume. The ratio is PyTorch seconds / ONNX Runtime seconds (> 1: ONNX Runtime is faster).

Usage: ``.venv/bin/python -m bench.export [--quick] [--width 8] [--volume 160 160 96] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.measure import emit_figures, format_table, interleaved_seconds, machine_description
from unet_med.export.runtime import OnnxRuntimeNetwork
from unet_med.export.writing import export_network, network_document
from unet_med.inferers import OverlapTileInferer
from unet_med.networks import create_unet


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="base width 4, a 48^3 volume, 2 repeats")
    parser.add_argument(
        "--width", type=int, default=8, help="base width (default 8, the 3D bundle's CPU width)"
    )
    parser.add_argument(
        "--volume", type=int, nargs=3, default=[160, 160, 96], help="preprocessed volume (voxels)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.volume, args.repeats = 4, [48, 48, 48], 2

    machine = machine_description()
    torch.manual_seed(0)
    network = create_unet("cicek3d", in_channels=1, out_channels=3, base_width=args.width).eval()
    with tempfile.TemporaryDirectory() as folder:
        model_file = Path(folder) / "model.onnx"
        start = time.perf_counter()
        export_network(network, model_file, "onnx")
        export_s = time.perf_counter() - start
        onnx_network = OnnxRuntimeNetwork(model_file, network_document(network))

        volume = torch.rand((1, 1, *args.volume), generator=torch.Generator().manual_seed(1))
        inferer = OverlapTileInferer()
        plan = inferer.plan(tuple(args.volume), network, in_channels=1)
        tile = torch.rand((1, 1, *plan.input_tile), generator=torch.Generator().manual_seed(2))

        with torch.inference_mode():
            reference = inferer(volume, network)
            exported = inferer(volume, onnx_network)
            difference = float((reference - exported).abs().max())
            agreement = float((reference.argmax(1) == exported.argmax(1)).float().mean())
            tiles = interleaved_seconds(
                {"pytorch": lambda: network(tile), "onnxruntime": lambda: onnx_network(tile)},
                repeats=args.repeats,
            )
            volumes = interleaved_seconds(
                {
                    "pytorch": lambda: inferer(volume, network),
                    "onnxruntime": lambda: inferer(volume, onnx_network),
                },
                repeats=args.repeats,
                warmup=0,
            )

    rows = [
        {"case": "tile", "size": "x".join(map(str, plan.input_tile)), "tiles": 1,
         "pytorch_s": tiles["pytorch"], "onnxruntime_s": tiles["onnxruntime"],
         "ratio": tiles["pytorch"] / tiles["onnxruntime"]},
        {"case": "volume", "size": "x".join(map(str, args.volume)), "tiles": plan.num_tiles,
         "pytorch_s": volumes["pytorch"], "onnxruntime_s": volumes["onnxruntime"],
         "ratio": volumes["pytorch"] / volumes["onnxruntime"]},
    ]  # fmt: skip
    print(f"machine: {machine}")
    print(
        f"cicek3d base width {args.width}, tile {plan.input_tile} -> {plan.output_tile}, "
        f"export {export_s:.1f} s"
    )
    print(format_table(rows))
    print(f"logits max |difference| {difference:.2e}, argmax agreement {agreement:.6f}")
    emit_figures({
        "width": args.width, "input_tile": list(plan.input_tile), "volume": list(args.volume),
        "tiles": plan.num_tiles, "threads": torch.get_num_threads(), "export_s": export_s,
        "tile_pytorch_s": tiles["pytorch"], "tile_onnxruntime_s": tiles["onnxruntime"],
        "tile_ratio": rows[0]["ratio"], "volume_pytorch_s": volumes["pytorch"],
        "volume_onnxruntime_s": volumes["onnxruntime"], "volume_ratio": rows[1]["ratio"],
        "max_abs_difference": difference, "argmax_agreement": agreement,
        "load_avg_1min_at_start": machine["load_avg_1min_at_start"],
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
