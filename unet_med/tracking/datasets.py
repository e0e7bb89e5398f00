"""The data a run used, as MLflow dataset inputs (``log_inputs``): what fills the runs table's
Dataset column, its Datasets filter and the run page's "Datasets" box.

A training logs its manifest twice, once per context: the rows it trained on (context
``training``) and the rows it validated on (``validation``); an evaluation logs the rows it
scored (``testing``); a batch inference logs the folder of scans it segmented (``inference``).

Why our own :class:`mlflow.entities.Dataset` instead of ``mlflow.data.from_pandas``: MLflow
computes a pandas dataset's digest from a sample of its values, while here the digest must be the
manifest's content hash, the value of the run's ``data.manifest_sha256`` param, so the same bytes
are the same dataset in every run. MLflow stores at most 36 characters of digest, so the digest is
the SHA-256's first :data:`DIGEST_CHARS` hex digits; the full hash is in the profile and the param.
MLflow keeps one input per (name, digest) per run, so the two contexts of a training are two
datasets whose names say the subset: ``demo2d/manifest [train]``, ``demo2d/manifest [val, fold 2
of 5]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DIGEST_CHARS",
    "CONTEXT_TAG",
    "SPLIT_CONTEXTS",
    "manifest_label",
    "manifest_split_sizes",
    "manifest_dataset",
    "folder_dataset",
    "dataset_input",
    "log_dataset_inputs",
    "log_manifest_inputs",
]

#: Hex digits of the SHA-256 kept as an MLflow dataset digest (MLflow's limit is 36).
DIGEST_CHARS = 16
#: Input tag MLflow reads as the dataset's context.
CONTEXT_TAG = "mlflow.data.context"
#: Manifest split -> MLflow dataset context.
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def manifest_label(manifest: str | os.PathLike) -> str:
    """Short name of a manifest: ``<folder>/<stem>`` (``demo2d/manifest``), since many manifests
    are called ``manifest.csv``."""
    path = Path(manifest).resolve()
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def manifest_split_sizes(manifest: str | os.PathLike) -> dict[str, int]:
    """Rows per ``split`` value of a manifest, in the order train, val, test (only splits present)."""
    from unet_med.data.manifest import read_manifest

    counts = read_manifest(manifest, resolve=False)["split"].value_counts().to_dict()
    return {split: int(counts[split]) for split in SPLIT_CONTEXTS if split in counts}


def _manifest_schema(manifest: str | os.PathLike) -> str:
    """The manifest's columns as MLflow's column-spec schema JSON (all strings: paths and ids)."""
    from unet_med.data.manifest import read_manifest

    columns = list(read_manifest(manifest, resolve=False).columns)
    spec = [{"type": "string", "name": str(c), "required": True} for c in columns]
    return json.dumps({"mlflow_colspec": spec})


def manifest_dataset(
    manifest: str | os.PathLike,
    split: str,
    *,
    fold: int | None = None,
    num_folds: int | None = None,
    fold_seed: int = 0,
):
    """The ``split`` rows of ``manifest`` (``train``, ``val`` or ``test``; with a ``fold``, the
    cross-validation subset that training uses, see
    :func:`unet_med.data.manifest.manifest_datalist`) as an ``mlflow.entities.Dataset``.

    Name ``<manifest label> [<split>]`` or ``[<split>, fold K of N]``; digest: the first
    :data:`DIGEST_CHARS` hex digits of the manifest's SHA-256; source: the manifest's absolute
    path (source type ``local``); profile (JSON): ``cases`` in this subset, the manifest's rows
    per split, its full SHA-256 and the fold settings.

    Raises:
        ManifestError: the manifest cannot be read or split (named by the manifest module).
    """
    from mlflow.entities import Dataset

    from unet_med.data.manifest import manifest_datalist, manifest_sha256

    path = Path(manifest).resolve()
    sha256 = manifest_sha256(path)
    if fold is not None:
        kwargs = {"fold": int(fold), "num_folds": int(num_folds or 5), "seed": int(fold_seed)}
        rows = manifest_datalist(path, split, **kwargs)
        subset = f"{split}, fold {kwargs['fold']} of {kwargs['num_folds']}"
    else:
        rows = manifest_datalist(path, split)
        subset = split
    profile: dict[str, Any] = {
        "cases": len(rows),
        "split": split,
        "manifest_splits": manifest_split_sizes(path),
        "manifest_sha256": sha256,
    }
    if fold is not None:
        profile.update(fold=int(fold), num_folds=int(num_folds or 5), fold_seed=int(fold_seed))
    return Dataset(
        name=f"{manifest_label(path)} [{subset}]",
        digest=sha256[:DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": str(path)}),
        schema=_manifest_schema(path),
        profile=json.dumps(profile),
    )


def folder_dataset(
    folder: str | os.PathLike, *, files: Iterable[str] | None = None, profile: Mapping | None = None
):
    """A folder of scans (a batch inference's input) as an ``mlflow.entities.Dataset``: name the
    folder's name, source its absolute path, profile ``files`` (count) plus ``profile``.

    The digest hashes the folder's listing, every file's relative path and size in bytes (or only
    ``files``, relative paths, when given), not the scans' bytes: a batch may be gigabytes of
    DICOM that inference has just read once, and the listing already tells two inputs apart.
    """
    from mlflow.entities import Dataset

    root = Path(folder).resolve()
    names = sorted(files) if files is not None else sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
    )
    digest = hashlib.sha256()
    for name in names:
        target = root / name
        size = target.stat().st_size if target.is_file() else -1
        digest.update(f"{name}\0{size}\n".encode())
    return Dataset(
        name=root.name or str(root),
        digest=digest.hexdigest()[:DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": str(root)}),
        profile=json.dumps({"files": len(names), **dict(profile or {})}),
    )


def dataset_input(dataset, context: str):
    """``dataset`` as a run input with the MLflow context tag ``context``."""
    from mlflow.entities import DatasetInput, InputTag

    return DatasetInput(dataset=dataset, tags=[InputTag(key=CONTEXT_TAG, value=context)])


# A dataset row is created on first use by a store's get-or-create, which is not atomic: two runs
# logging the same manifest into one experiment at the same moment (folds started together) can
# both try to insert it, and the loser gets a unique-constraint error. The row then exists, so
# logging again links to it.
_DATASET_RACE = ("UNIQUE constraint failed: datasets", "duplicate key value violates unique constraint")
_DATASET_RACE_ATTEMPTS = 4


def log_dataset_inputs(client, run_id: str, inputs: Mapping[str, Any]) -> None:
    """Log ``{context: dataset}`` as inputs of run ``run_id`` in one request; retried (with a short
    pause) when another run created the same dataset row at the same moment."""
    from mlflow.exceptions import MlflowException

    datasets = [dataset_input(d, context) for context, d in inputs.items()]
    for attempt in range(_DATASET_RACE_ATTEMPTS):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as error:
            if attempt == _DATASET_RACE_ATTEMPTS - 1 or not any(m in str(error) for m in _DATASET_RACE):
                raise
            time.sleep(0.2 * (attempt + 1))


def log_manifest_inputs(
    client,
    run_id: str,
    manifest: str | os.PathLike,
    splits: Iterable[str] = ("train", "val"),
    *,
    fold: int | None = None,
    num_folds: int | None = None,
    fold_seed: int = 0,
) -> dict[str, int]:
    """Log the ``splits`` of ``manifest`` as inputs of ``run_id`` (context per
    :data:`SPLIT_CONTEXTS`); returns the number of cases per split, as logged."""
    datasets = {
        split: manifest_dataset(manifest, split, fold=fold, num_folds=num_folds, fold_seed=fold_seed)
        for split in splits
    }
    log_dataset_inputs(client, run_id, {SPLIT_CONTEXTS[s]: d for s, d in datasets.items()})
    return {split: json.loads(d.profile)["cases"] for split, d in datasets.items()}
