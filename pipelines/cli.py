"""The ``unet-med`` console command.

Each subcommand lives in its own module under ``pipelines/`` exposing
``register(subparsers) -> None``; the module's heavy imports (torch, monai) happen inside the
handler, so ``unet-med --help`` stays fast. Handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from unet_med import __version__

# Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "pipelines.presets",
    "pipelines.demo_data",
    "pipelines.scans",
    "pipelines.manifest",
    "pipelines.plan",
    "pipelines.runs",
    "pipelines.mlflow_server",
    "pipelines.infer",
    "pipelines.watch",
    "pipelines.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-med",
        description="U-Net segmentation of CT, MR and microscopy scans on MONAI.",
    )
    parser.add_argument("--version", action="version", version=f"unet-med {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
