"""``unet-med presets``: the U-Net presets with their paper sizes, parameters and conv layers."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="list the U-Net presets (paper input -> output size, parameters, conv layers)",
        description="List the U-Net presets at the input size and class count of their source "
        "document: name, dimensions, input -> output size, parameters, convolution layers.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--base-width", type=int, default=None, help="scale every preset to this base width")
    parser.set_defaults(handler=run)


def format_size(size: list[int]) -> str:
    return "x".join(str(s) for s in size)


def run(args: argparse.Namespace) -> int:
    from unet_med.networks import preset_table

    overrides = {} if args.base_width is None else {"base_width": args.base_width}
    rows = preset_table(**overrides)
    if args.json:
        keys = ("name", "spatial_dims", "input_size", "output_size", "parameters", "conv_layers")
        print(json.dumps([{k: row[k] for k in keys} for row in rows], indent=2))
        return 0
    header = f"{'preset':<9} {'dims':>4} {'input -> output':>26} {'parameters':>12} {'convs':>5}  description"
    print(header)
    print("-" * len(header))
    for row in rows:
        sizes = f"{format_size(row['input_size'])} -> {format_size(row['output_size'])}"
        print(
            f"{row['name']:<9} {row['spatial_dims']:>3}D {sizes:>26} {row['parameters']:>12,} "
            f"{row['conv_layers']:>5}  {row['description']}"
        )
    return 0
