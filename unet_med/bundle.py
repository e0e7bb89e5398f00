"""The bundle workflow layer: how ``python -m monai.bundle run`` executes this project's bundles,
and the set-up checks the bundles run before the first epoch.

:class:`UNetMedWorkflow` is MONAI's :class:`~monai.bundle.ConfigWorkflow` owning the parser of
the run; it refuses command-line override ids that no config file of the bundle knows and writes
the executed config (all config files merged, overrides applied) to a file whose path becomes the
config id ``save_execute_config``, which the bundles hand to the MLflow tracker. Select it with
``--workflow_name``::

    python -m monai.bundle run training --workflow_name unet_med.bundle.UNetMedWorkflow \\
        --config_file bundles/unet2d_paper/configs/training.json ...

Without ``--workflow_name`` MONAI runs the plain ``ConfigWorkflow``: the bundle still trains, but
``save_execute_config`` keeps its default ``null`` (the tracker logs no config), override ids are
not checked, and :func:`warn_without_workflow` says so in one line. MONAI offers no way for a
config file to choose its own workflow class (``create_workflow`` picks it before any config is
read), so the documented commands carry the flag.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import ensure_tuple

from unet_med.atomic_files import atomic_output
from unet_med.distributed import is_main_process

__all__ = [
    "WORKFLOW_NAME",
    "EXECUTED_CONFIG_DIR",
    "UNetMedWorkflow",
    "bundle_config_ids",
    "check_override_ids",
    "export_executed_config",
    "warn_without_workflow",
    "prepare_manifest",
    "require_file",
]

logger = logging.getLogger(__name__)

#: The ``--workflow_name`` value that selects :class:`UNetMedWorkflow`.
WORKFLOW_NAME = "unet_med.bundle.UNetMedWorkflow"
#: Folder under the run's ``output_dir`` holding the executed configs, one file per run.
EXECUTED_CONFIG_DIR = "executed_configs"
_CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def _top_level_id(config_id: str) -> str:
    return re.split(r"#|::", str(config_id), maxsplit=1)[0]


def bundle_config_ids(config_files: str | os.PathLike | Sequence[str | os.PathLike]) -> set[str]:
    """Top-level ids of the given config files and of every config file beside the first one (the
    bundle's ``configs/`` folder: training, evaluation, inference and multi-GPU ids alike),
    ``metadata.json`` and ``series_selection.json`` excepted. Only the bundle's folder is
    scanned: an override file merged from elsewhere (a plan file in a data folder) contributes its
    own ids, not its neighbours'."""
    files = [Path(f) for f in ensure_tuple(config_files)]
    if files:
        files += [p for p in sorted(files[0].parent.iterdir()) if p.suffix in _CONFIG_SUFFIXES]
    # metadata and the series selection rules of `unet-med infer` hold no config ids
    files = [f for f in files if f.name not in ("metadata.json", "series_selection.json")]
    ids: set[str] = set()
    for path in dict.fromkeys(files):
        ids |= {_top_level_id(k) for k in ConfigParser.load_config_file(path)}
    return ids


def check_override_ids(override_ids: Iterable[str], known_ids: Iterable[str], where: str) -> None:
    """Refuse a command-line override whose (top-level) id is in none of the bundle's config
    files: a typo like ``--epoch 3`` would otherwise add an unused id and be ignored silently.
    Ids starting with ``_`` (``_meta_#...``) are MONAI's and pass. The error lists the valid ids.
    """
    known = set(known_ids)
    unknown = sorted(k for k in override_ids if not str(k).startswith("_") and _top_level_id(k) not in known)
    if unknown:
        overridable = sorted(k for k in known if not k.startswith("_") and k != "imports")
        raise ValueError(
            f"unknown config id(s) {unknown} on the command line; the config files in {where} "
            f"know: {overridable}"
        )


def export_executed_config(parser: ConfigParser, path: str | os.PathLike) -> Path:
    """Write the parser's config (all files merged, overrides applied, ``_meta_`` included) as
    JSON to ``path``, atomically (MONAI's ``export_config_file`` writes in place)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        parser.export_config_file(parser.get(), tmp, indent=2)
    return path


class UNetMedWorkflow(ConfigWorkflow):
    """MONAI's ``ConfigWorkflow`` for this project's bundles, selected with
    ``--workflow_name unet_med.bundle.UNetMedWorkflow`` on ``python -m monai.bundle run``.

    On top of ``ConfigWorkflow`` (which it leaves unchanged: ``run``, ``check_properties``, the
    ``initialize``/``run``/``finalize`` ids), when constructed it

    - refuses override ids that are in none of the bundle's config files
      (:func:`check_override_ids`), listing the valid ones;
    - when the config declares ``save_execute_config`` (the bundles' ``training.json`` does, as
      ``null``), exports the executed config to
      ``<output_dir>/executed_configs/<run_id>_<YYYYmmdd-HHMMSS>.json`` (or to the path given as
      ``--save_execute_config PATH``) and sets ``save_execute_config`` to that absolute path, so
      config items such as the MLflow tracker's ``"config_file": "@save_execute_config"`` receive
      it. Only rank 0 of a distributed run exports; other ranks see ``null``.

    Args are those of :class:`~monai.bundle.ConfigWorkflow`; ``override`` holds the command-line
    overrides (config id -> value).
    """

    def __init__(
        self,
        config_file: str | Sequence[str],
        meta_file: str | Sequence[str] | None = None,
        logging_file: str | bool | None = None,
        init_id: str = "initialize",
        run_id: str = "run",
        final_id: str = "finalize",
        tracking: str | dict | None = None,
        workflow_type: str | None = "train",
        properties_path: str | os.PathLike | None = None,
        **override: Any,
    ) -> None:
        super().__init__(
            config_file=config_file,
            meta_file=meta_file,
            logging_file=logging_file,
            init_id=init_id,
            run_id=run_id,
            final_id=final_id,
            tracking=tracking,
            workflow_type=workflow_type,
            properties_path=properties_path,
            **override,
        )
        known = bundle_config_ids(config_file) | {init_id, run_id, final_id}
        check_override_ids(override, known, str(self.config_root_path))
        self.executed_config: Path | None = None
        if "save_execute_config" in self.parser:
            self.executed_config = self._export(override.get("save_execute_config"))

    def _export(self, requested: Any) -> Path | None:
        if not is_main_process():
            self.parser["save_execute_config"] = None
            return None
        if isinstance(requested, (str, os.PathLike)):
            path = Path(requested).resolve()
        else:
            output_dir = Path(self.parser.get_parsed_content("output_dir")).resolve()
            path = output_dir / EXECUTED_CONFIG_DIR / f"{self.run_id}_{time.strftime('%Y%m%d-%H%M%S')}.json"
        self.parser["save_execute_config"] = str(path)
        export_executed_config(self.parser, path)
        logger.info("executed config -> %s", path)
        return path


def warn_without_workflow(save_execute_config: str | None) -> None:
    """One warning line when a bundle runs without :class:`UNetMedWorkflow` (its
    ``save_execute_config`` is still the config files' ``null``): the run goes on, but override
    ids are not checked and no executed config reaches MLflow. Rank 0 only."""
    if save_execute_config is None and is_main_process():
        logger.warning(
            "running without --workflow_name %s: command-line override ids are not checked and the "
            "executed config is not logged to MLflow",
            WORKFLOW_NAME,
        )


# -- set-up checks the bundles run before the first epoch ---------------------------------------
def prepare_manifest(
    manifest: str | os.PathLike,
    demo_manifest: str | os.PathLike,
    *,
    dims: int,
    **demo_kwargs: Any,
) -> Path:
    """The manifest a training reads, checked before the first epoch.

    The bundles' default manifest is the demo dataset's: when ``manifest`` is that path and the
    file is absent, the demo dataset (``dims`` = 2 or 3 spatial dimensions) is generated there
    (offline, seeded; rank 0 generates while other ranks wait). Any other missing manifest is an
    error naming the file. The manifest is then validated and an invalid one stops the run with
    the validation report.
    """
    from unet_med.data.demo import generate_demo_dataset

    manifest = Path(manifest)
    demo = Path(demo_manifest)
    if not manifest.is_file():
        if manifest.resolve() != demo.resolve():
            raise FileNotFoundError(f"manifest {manifest} does not exist (pass --manifest with a CSV file)")
        if is_main_process():
            logger.info("generating the %dD demo dataset into %s", dims, demo.parent)
            written = generate_demo_dataset(demo.parent, dims=dims, **demo_kwargs)
            if written.resolve() != demo.resolve():
                raise RuntimeError(f"the demo generator wrote {written}, expected {demo}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    _require_valid_manifest(manifest)
    return manifest


def _require_valid_manifest(manifest: Path) -> None:
    from unet_med.data.validation import validate_manifest

    report = validate_manifest(manifest)
    if not report.ok:
        raise ValueError(f"invalid manifest {manifest}:\n{report.summary()}")


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``FileNotFoundError`` naming ``path`` and what it should hold, unless it is a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist ({what})")
    return path

