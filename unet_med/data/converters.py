"""Converters into the project's manifest form from a Medical Segmentation Decathlon ``dataset.json``
and from an nnU-Net raw dataset folder (``imagesTr/``, ``labelsTr/``, ``_0000`` channel suffixes).

Both write ``manifest.csv`` (paths relative to the manifest's folder; channels joined by ``;``)
and its JSON sidecar with the label names. Training cases are split into train/val with a seeded
random draw; ``imagesTs`` cases become unlabelled test rows.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from unet_med.data.manifest import CHANNEL_SEPARATOR, REQUIRED_COLUMNS
from unet_med.data.writing import write_csv, write_json

__all__ = ["manifest_from_decathlon", "manifest_from_nnunet"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _case_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _assign_splits(n: int, val_fraction: float, seed: int) -> list[str]:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * n)) if n > 1 else 0
    if val_fraction > 0 and n > 1:
        n_val = max(n_val, 1)
    order = np.random.default_rng(seed).permutation(n)
    splits = ["train"] * n
    for i in order[:n_val]:
        splits[int(i)] = "val"
    return splits


def _write(rows: list[dict[str, str]], labels: dict[int, str] | None, out_csv: Path, name: str) -> Path:
    import pandas as pd

    write_json(
        {"name": name, "labels": {str(k): v for k, v in sorted((labels or {}).items())}},
        out_csv.with_suffix(".json"),
    )
    return write_csv(pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS)), out_csv)


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def manifest_from_decathlon(
    dataset_json: str | Path, out_csv: str | Path | None = None, *, val_fraction: float = 0.2, seed: int = 0
) -> Path:
    """Convert a Decathlon ``dataset.json`` (``training`` image/label pairs, ``test`` images, ``labels``).

    Paths in the JSON are relative to its folder. Returns the written manifest path (default
    ``manifest.csv`` next to ``dataset.json``).

    Raises:
        ValueError: the JSON lacks ``training`` or an entry lacks ``image``/``label``, naming the entry.
    """
    dataset_json = Path(dataset_json)
    try:
        doc: dict[str, Any] = json.loads(dataset_json.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{dataset_json}: not a readable dataset.json ({exc})") from None
    if not isinstance(doc.get("training"), list):
        raise ValueError(f"{dataset_json}: no 'training' list (not a Decathlon dataset.json)")
    root = dataset_json.parent
    out = Path(out_csv) if out_csv is not None else root / "manifest.csv"
    training = doc["training"]
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise ValueError(f"{dataset_json}: training entry {i} needs 'image' and 'label', got {entry!r}")
    splits = _assign_splits(len(training), val_fraction, seed)
    rows = [
        {
            "subject_id": _case_name(e["image"]),
            "image": _rel(root / e["image"], out.parent),
            "label": _rel(root / e["label"], out.parent),
            "split": s,
        }
        for e, s in zip(training, splits)
    ]
    for entry in doc.get("test", []) or []:
        image = entry["image"] if isinstance(entry, dict) else entry
        rows.append(
            {
                "subject_id": _case_name(image),
                "image": _rel(root / image, out.parent),
                "label": "",
                "split": "test",
            }
        )
    labels = {int(k): str(v) for k, v in (doc.get("labels") or {}).items()}
    return _write(rows, labels, out, str(doc.get("name", dataset_json.parent.name)))


def _nnunet_cases(folder: Path, ending: str) -> dict[str, list[Path]]:
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(ending) or f.name.startswith("."):
            continue
        m = _CHANNEL.match(f.name[: -len(ending)])
        if not m:
            raise ValueError(f"{f}: nnU-Net image names end in _XXXX{ending} (channel index), got {f.name}")
        cases[m["case"]][int(m["channel"])] = f
    out = {}
    for case, chans in cases.items():
        if sorted(chans) != list(range(len(chans))):
            raise ValueError(
                f"{folder}: case {case} has channels {sorted(chans)}, expected 0..{len(chans) - 1}"
            )
        out[case] = [chans[c] for c in range(len(chans))]
    counts = {len(v) for v in out.values()}
    if len(counts) > 1:
        raise ValueError(f"{folder}: cases have different channel counts {sorted(counts)}")
    return out


def manifest_from_nnunet(
    folder: str | Path, out_csv: str | Path | None = None, *, val_fraction: float = 0.2, seed: int = 0
) -> Path:
    """Convert an nnU-Net raw dataset folder (``dataset.json``, ``imagesTr/case_0000.nii.gz``,
    ``labelsTr/case.nii.gz``, optional ``imagesTs/``).

    Labels come from ``dataset.json`` (v2 ``{"name": value}`` or v1 ``{"value": "name"}``);
    ``file_ending`` defaults to ``.nii.gz``. A training case without a label file is an error.
    Returns the written manifest path (default ``manifest.csv`` in ``folder``).
    """
    folder = Path(folder)
    if not (folder / "imagesTr").is_dir():
        raise ValueError(f"{folder}: no imagesTr/ folder (not an nnU-Net raw dataset)")
    doc: dict[str, Any] = {}
    if (folder / "dataset.json").is_file():
        doc = json.loads((folder / "dataset.json").read_text())
    ending = str(doc.get("file_ending", ".nii.gz"))
    out = Path(out_csv) if out_csv is not None else folder / "manifest.csv"
    train_cases = _nnunet_cases(folder / "imagesTr", ending)
    if not train_cases:
        raise ValueError(f"{folder / 'imagesTr'}: no images ending in _XXXX{ending}")
    names = sorted(train_cases)
    missing = [c for c in names if not (folder / "labelsTr" / f"{c}{ending}").is_file()]
    if missing:
        raise ValueError(f"{folder / 'labelsTr'}: no label for case(s) {', '.join(missing[:5])} ({ending})")
    splits = _assign_splits(len(names), val_fraction, seed)
    rows = [
        {
            "subject_id": c,
            "image": CHANNEL_SEPARATOR.join(_rel(p, out.parent) for p in train_cases[c]),
            "label": _rel(folder / "labelsTr" / f"{c}{ending}", out.parent),
            "split": s,
        }
        for c, s in zip(names, splits)
    ]
    if (folder / "imagesTs").is_dir():
        for c, paths in sorted(_nnunet_cases(folder / "imagesTs", ending).items()):
            rows.append(
                {
                    "subject_id": c,
                    "image": CHANNEL_SEPARATOR.join(_rel(p, out.parent) for p in paths),
                    "label": "",
                    "split": "test",
                }
            )
    raw = doc.get("labels") or {}
    labels: dict[int, str] = {}
    for k, v in raw.items():
        if str(k).lstrip("-").isdigit():
            labels[int(k)] = str(v)
        elif isinstance(v, int):
            labels[v] = str(k)
        # region-based labels (lists of values) have no single class value; left undeclared
    return _write(rows, labels, out, str(doc.get("name", folder.name)))
