"""``unet-med export``: a trained bundle checkpoint as a deployable folder (ONNX or TorchScript
network + ``export.json``) that ``unet-med infer --bundle DIR`` segments with, no bundle needed.

The command line around :func:`unet_med.export.export_bundle`; heavy imports happen in :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2

EPILOG = """\
writes (in DIR):
  model.onnx      --format onnx: the network, ONNX opset of torch.onnx (dynamo exporter), weights
                  inside; input "image" (batch, channels, *spatial) float32, output "logits";
                  batch and spatial axes dynamic, each spatial axis restricted to the legal sizes
                  of the valid-convolution U-Net: smallest + period * n voxels (n >= 0), named
                  "period*k + (smallest - period)" in the graph. ONNX Runtime does not enforce
                  that relation: unet-med infer refuses an illegal tile before running it.
  model.ts        --format torchscript: torch.jit.script of the network (as monai.bundle ckpt_export)
  export.json     labels, spacing (mm) and normalisation, sizes (smallest input/output, period,
                  margin = context voxels per side), the plan, the architecture, the inference
                  config (preprocessing, overlap-tile inferer, postprocessing), the check below

checks: the exported model's logits are compared with PyTorch's on a random legal tile; the
largest difference is printed and stored in export.json ("verified").

segment with it:
  unet-med infer --bundle DIR --input SCANS_DIR --output OUT_DIR   (engine from the format:
  onnxruntime for ONNX, torchscript for TorchScript; --engine names it explicitly)

ONNX needs the optional extra: pip install 'unet-med[onnx]' (onnx, onnxscript, onnxruntime).

exit codes: 0 written; 2 bundle, checkpoint or format unusable, or the ONNX packages missing
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained bundle network to ONNX or TorchScript with what inference needs",
        description="Export the network of a bundle checkpoint (with the network.json and plan.json "
        "beside it) to ONNX or TorchScript, plus export.json: labels, spacing, normalisation, legal "
        "input sizes and margin, the plan and the inference config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bundle", type=Path, required=True, help="bundle folder (with configs/inference.json)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, metavar="FILE",
        help="network weights (default: BUNDLE/models/model.pt); one checkpoint, ensembles are not exported",
    )  # fmt: skip
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder written (created)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from unet_med.export import export_bundle
    from unet_med.inference import BundleError

    if not args.bundle.is_dir():
        print(f"unet-med export: error: bundle folder not found: {args.bundle}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = export_bundle(args.bundle, args.output, fmt=args.format, checkpoint=args.checkpoint)
    except BundleError as exc:
        print(f"unet-med export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    doc = result.document
    sizes = doc["sizes"]
    print(f"wrote {result.model_file} and {result.export_file}")
    print(f"legal input sizes: {sizes['legal_input']}; margin {sizes['margin']} voxels per side")
    print(f"labels: {doc['labels']}; spacing {doc['preprocessing'].get('spacing')} mm, "
          f"normalisation {doc['preprocessing'].get('intensity')}")
    print(f"checked against PyTorch on a tile of {doc['verified']['input_size']}: largest logit difference "
          f"{doc['verified']['max_abs_difference']:.2e}")
    print(f"segment with: unet-med infer --bundle {args.output} --input SCANS_DIR --output OUT_DIR")
    return EXIT_OK
