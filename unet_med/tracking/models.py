"""The best model of a training as an MLflow model, its registration, and segmenting with a
registered model (``unet-med infer --model models:/NAME/VERSION``).

Why a ``pyfunc`` around the bundle rather than ``mlflow.pytorch.log_model``: a network alone cannot
segment a scan. What turns a scan into a label map is the bundle's preprocessing (orientation,
resampling to the plan's spacing, intensity normalisation, foreground crop), the project's
:class:`~unet_med.inferers.OverlapTileInferer` (mirror context for the valid convolutions) and the
postprocessing that maps the prediction back into the scan's grid. ``mlflow.pytorch`` would also
pickle the ``nn.Module``, which ``torch.load(weights_only=True)`` refuses. So the logged model is a
small bundle folder as ``pyfunc`` artifacts::

    bundle/configs/*.json        the bundle's configs (inference.json, metadata.json, ...)
    bundle/models/model.pt       the best weights: a state_dict, loads with weights_only=True
    bundle/models/network.json   the architecture of those weights
    bundle/models/plan.json      the plan training ran with (when it had one)

and both ways of using it load that folder with the same code as ``unet-med infer --bundle``
(:func:`~unet_med.inference.bundle_loading.load_bundle`): ``mlflow.pyfunc.load_model(uri)``
(:class:`BundleSegmentationModel`: an image array in, a label map out) and ``unet-med infer
--model`` (:func:`download_model_bundle`, then :class:`~unet_med.inference.BatchSegmenter`), so no
bundle folder is needed where the model is used. Loading needs ``unet_med`` importable (the project
installed); ``requirements.txt`` pins the third-party packages to the versions the training ran
with.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from unet_med.distributed import is_main_process

__all__ = [
    "BUNDLE_ARTIFACT",
    "MODEL_NAME",
    "BestModelLogger",
    "BundleSegmentationModel",
    "LoggedBundleModel",
    "ModelRegistryError",
    "check_model_registry",
    "check_weights_fit_network",
    "download_model_bundle",
    "log_bundle_model",
    "pinned_requirements",
    "register_bundle_model",
    "resolve_model_version",
    "segment_array",
]

logger = logging.getLogger(__name__)

#: Name of the logged model inside a training run.
MODEL_NAME = "segmentation_model"
#: Key (and folder name) of the bundle folder among the pyfunc model's artifacts.
BUNDLE_ARTIFACT = "bundle"
_WEIGHTS = "model.pt"
_CONFIG_FILES = ("*.json", "*.conf")
# the models-from-code file MLflow runs to build the pyfunc (so nothing is pickled)
_MODEL_CODE = Path(__file__).with_name("model_code.py")
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))$")


class ModelRegistryError(RuntimeError):
    """A model that cannot be logged, registered or found: a store without a Model Registry, a
    registered model or version that does not exist, weights that do not fit their
    ``network.json``. The message names the store or the files and what exists."""


# -- the bundle folder of a logged model --------------------------------------------------------
def _copy_bundle_folder(bundle_root: Path, models_dir: Path, destination: Path) -> Path:
    """``destination`` filled with ``bundle_root/configs/{*.json,*.conf}`` and ``model.pt``,
    ``network.json`` and ``plan.json`` of ``models_dir``."""
    from unet_med.inference.bundle_loading import NETWORK_FILE, PLAN_FILE

    configs = bundle_root / "configs"
    if not (configs / "inference.json").is_file():
        raise ModelRegistryError(
            f"bundle {bundle_root}: no configs/inference.json; the logged model needs it to segment"
        )
    (destination / "configs").mkdir(parents=True, exist_ok=True)
    for pattern in _CONFIG_FILES:
        for path in sorted(configs.glob(pattern)):
            shutil.copy2(path, destination / "configs" / path.name)
    (destination / "models").mkdir(exist_ok=True)
    for name in (_WEIGHTS, NETWORK_FILE, PLAN_FILE):
        if (models_dir / name).is_file():
            shutil.copy2(models_dir / name, destination / "models" / name)
    return destination


def check_weights_fit_network(models_dir: str | os.PathLike, *, what: str | None = None) -> None:
    """Check that ``models_dir/model.pt`` loads (``weights_only=True``) into the network that
    ``models_dir/network.json`` describes, every parameter name and shape matching.

    Args:
        models_dir: folder holding ``model.pt`` and ``network.json``.
        what: how the error names the model (default: the folder).

    Raises:
        ModelRegistryError: a file is missing or not loadable, or the weights do not fit.
    """
    from monai.bundle import ConfigParser

    from unet_med.inference.bundle_loading import NETWORK_FILE, BundleError, load_checkpoint_state

    models_dir = Path(models_dir)
    what = what or str(models_dir)
    network_file, weights = models_dir / NETWORK_FILE, models_dir / _WEIGHTS
    for path in (network_file, weights):
        if not path.is_file():
            raise ModelRegistryError(f"{what}: no {path.name} (expected {path})")
    try:
        config = json.loads(network_file.read_text())
        network = ConfigParser({"network": config}).get_parsed_content("network")
    except Exception as exc:
        raise ModelRegistryError(
            f"{what}: {NETWORK_FILE} does not build a network ({type(exc).__name__}: {exc})"
        ) from None
    try:
        state = load_checkpoint_state(weights)
    except BundleError as exc:
        raise ModelRegistryError(f"{what}: {exc}") from None
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).strip().splitlines()[:3])[:300]
        raise ModelRegistryError(
            f"{what}: {NETWORK_FILE} disagrees with the weights in {_WEIGHTS} ({detail}); a model whose "
            f"architecture does not fit its weights is not registered"
        ) from None


# -- the pyfunc model ----------------------------------------------------------------------------
def segment_array(bundle: Any, image: np.ndarray, spacing: Any = None, *, name: str = "image") -> np.ndarray:
    """Label map of one channel-first image array with the bundle's preprocessing, inferer and
    postprocessing, as :mod:`unet_med.inference.prediction` does for a scan on disk.

    Args:
        bundle: an :class:`~unet_med.inference.bundle_loading.InferenceBundle`.
        image: ``(channels, *spatial)`` intensities (HU for CT), ``spatial_dims`` spatial axes in
            RAS order.
        spacing: voxel size in mm per spatial axis (default 1 mm).
        name: how errors name the image.

    Returns:
        uint8 labels of shape ``image.shape[1:]``.

    Raises:
        ValueError: the image's dimensions or channels do not fit the network.
    """
    import torch
    from monai.data import MetaTensor

    from unet_med.inference.prediction import PreparedScan, predict_label_map

    image = np.asarray(image, dtype=np.float32)
    dims = bundle.spatial_dims
    if image.ndim != dims + 1 or image.shape[0] != bundle.in_channels:
        raise ValueError(
            f"{name}: expected a channel-first array of shape "
            f"({bundle.in_channels}, {', '.join(['n'] * dims)}), found shape {image.shape}"
        )
    spacing = [1.0] * dims if spacing is None else [float(s) for s in spacing]
    if len(spacing) != dims:
        raise ValueError(f"{name}: spacing needs {dims} values (mm per axis), found {spacing}")
    affine = np.diag([*spacing, *[1.0] * (3 - dims), 1.0])
    tensor = MetaTensor(torch.from_numpy(image.copy()), affine=torch.as_tensor(affine, dtype=torch.float64))
    data = bundle.preprocessing({"image": tensor})
    prepared = PreparedScan(data=data, image=image[0], affine=affine, spatial_shape=tuple(image.shape[1:]))
    return predict_label_map(prepared, bundle, name)


class BundleSegmentationModel(mlflow.pyfunc.PythonModel):
    """The MLflow ``pyfunc`` of a trained bundle: loads the logged bundle folder with
    :func:`~unet_med.inference.bundle_loading.load_bundle` (network rebuilt from ``network.json``,
    weights loaded with ``weights_only=True``, ``plan.json`` applied) and segments image arrays.

    ``predict(images, params={"spacing": [mm, ...]})``: ``images`` of shape
    ``(batch, channels, *spatial)`` (or one image without the batch axis), float32 intensities in
    RAS voxel order; returns uint8 label maps of shape ``(batch, *spatial)``. The model carries no
    weights of its own and is not pickled (MLflow runs :mod:`unet_med.tracking.model_code` to make
    it); set ``UNET_MED_DEVICE`` to choose the
    device (default: the bundle's).
    """

    def load_context(self, context) -> None:
        from unet_med.inference.bundle_loading import load_bundle

        self.bundle = load_bundle(
            context.artifacts[BUNDLE_ARTIFACT], device=os.environ.get("UNET_MED_DEVICE") or None
        )

    def predict(self, context, model_input, params: Mapping[str, Any] | None = None) -> np.ndarray:
        images = np.asarray(model_input, dtype=np.float32)
        if images.ndim == self.bundle.spatial_dims + 1:
            images = images[None]
        spacing = (params or {}).get("spacing")
        return np.stack(
            [segment_array(self.bundle, image, spacing, name=f"image {i}") for i, image in enumerate(images)]
        )


def pinned_requirements() -> list[str]:
    """``name==version`` of every runtime dependency of the installed ``unet-med`` (its extras
    left out), at the versions installed in this process: what the training ran with."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pinned = []
    for text in metadata.requires("unet-med") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        try:
            pinned.append(f"{requirement.name}=={metadata.version(requirement.name)}")
        except metadata.PackageNotFoundError:
            pinned.append(str(requirement))
    return pinned


def _signature_and_example(spatial_dims: int, in_channels: int):
    """The model signature (float32 images in, uint8 label maps out, ``spacing`` param) and a small
    input example (a 16-voxel-wide intensity ramp, 1 mm voxels)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    spatial = (-1,) * spatial_dims
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, *spatial))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *spatial))]),
        params=ParamSchema([ParamSpec("spacing", "double", [1.0] * spatial_dims, shape=(-1,))]),
    )
    size = (16,) * spatial_dims
    ramp = np.linspace(-200.0, 200.0, int(np.prod(size)), dtype=np.float32).reshape(size)
    example = np.broadcast_to(ramp, (1, in_channels, *size)).copy()
    return signature, (example, {"spacing": [1.0] * spatial_dims})


# -- logging and registering ---------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedBundleModel:
    """A logged model: ``model_uri`` (``models:/<model id>``), its id, the run that logged it and,
    when registered, the registered name and version."""

    model_uri: str
    model_id: str
    run_id: str
    registered_name: str | None = None
    registered_version: str | None = None


def _store_text(client) -> str:
    registry = getattr(client, "_registry_uri", None)
    uri = client.tracking_uri
    return f"MLflow store {uri}" + (f" (registry {registry})" if registry and registry != uri else "")


def check_model_registry(tracking_uri: str):
    """An ``MlflowClient`` for ``tracking_uri`` whose Model Registry answers.

    Raises:
        ModelRegistryError: the store has no Model Registry (e.g. a server started with an
            unsupported ``--registry-store-uri``), naming the store.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.search_registered_models(max_results=1)
    except Exception as exc:
        detail = " ".join(str(exc).strip().splitlines()[:2])[:300] or type(exc).__name__
        raise ModelRegistryError(
            f"{_store_text(client)} has no usable Model Registry ({detail}); registering a model "
            "(--register_model) and segmenting with one (infer --model) need a store with one: an SQLite "
            "store (sqlite:///.../mlflow.db) or `unet-med mlflow-server`"
        ) from None
    return client


def log_bundle_model(
    tracking_uri: str,
    run_id: str,
    bundle_root: str | os.PathLike,
    models_dir: str | os.PathLike,
    *,
    registered_model_name: str | None = None,
) -> LoggedBundleModel:
    """Log the weights in ``models_dir`` with ``bundle_root``'s configs as the MLflow model
    :data:`MODEL_NAME` of run ``run_id`` (:class:`BundleSegmentationModel`, signature, input
    example, pinned requirements), then register it as ``registered_model_name`` when given.

    Raises:
        ModelRegistryError: weights that do not fit ``network.json``, or a registry problem.
    """
    from mlflow.models import Model

    from unet_med.inference.bundle_loading import load_bundle
    from unet_med.tracking.store import using_tracking_uri

    models_dir = Path(models_dir)
    check_weights_fit_network(models_dir)
    with tempfile.TemporaryDirectory(prefix="unet-med-model-") as tmp:
        folder = _copy_bundle_folder(Path(bundle_root), models_dir, Path(tmp) / BUNDLE_ARTIFACT)
        bundle = load_bundle(folder, device="cpu")
        signature, example = _signature_and_example(bundle.spatial_dims, bundle.in_channels)
        del bundle
        with using_tracking_uri(tracking_uri):
            # the model belongs to the run's experiment (MLflow would pick the process's active
            # experiment, "Default" with artifacts under ./mlruns) and carries the run's params
            run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
            model = mlflow.initialize_logged_model(
                name=MODEL_NAME, source_run_id=run_id, experiment_id=run.info.experiment_id,
                params=dict(run.data.params),
                tags={"unet_med.weights": "state_dict + network.json (torch.load weights_only=True)"},
            )
            info = Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=model.model_id,
                python_model=str(_MODEL_CODE),
                artifacts={BUNDLE_ARTIFACT: str(folder)},
                signature=signature,
                input_example=example,
                pip_requirements=pinned_requirements(),
            )
    logged = LoggedBundleModel(model_uri=info.model_uri, model_id=info.model_id, run_id=run_id)
    logger.info("logged MLflow model %s (run %s)", logged.model_uri, run_id)
    if registered_model_name:
        version = register_bundle_model(tracking_uri, logged.model_uri, registered_model_name)
        logged = LoggedBundleModel(logged.model_uri, logged.model_id, run_id, registered_model_name, version)
    return logged


def register_bundle_model(tracking_uri: str, model_uri: str, name: str) -> str:
    """Register the logged model ``model_uri`` as a new version of ``name``; returns the version.

    The model's artifacts are downloaded first and its ``network.json`` checked against its weights
    (:func:`check_weights_fit_network`): a model that cannot be rebuilt is never registered.

    Raises:
        ModelRegistryError: no Model Registry in the store, or weights that do not fit.
    """
    from unet_med.tracking.store import using_tracking_uri

    client = check_model_registry(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="unet-med-register-") as tmp, using_tracking_uri(tracking_uri):
        bundle = _download_bundle(model_uri, Path(tmp))
        check_weights_fit_network(bundle / "models", what=f"logged model {model_uri}")
        version = mlflow.register_model(model_uri, name)
    client.set_model_version_tag(
        name, version.version, "unet_med.weights_checked", "network.json fits model.pt"
    )
    logger.info("registered %s as models:/%s/%s in %s", model_uri, name, version.version, tracking_uri)
    return str(version.version)


# -- using a registered model --------------------------------------------------------------------
def resolve_model_version(model_uri: str, tracking_uri: str):
    """The registry's ``ModelVersion`` that ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` names.

    Raises:
        ModelRegistryError: a malformed URI, a store without a registry, or a name, version or
            alias that does not exist (the message lists the store's registered models, or the
            model's versions and aliases).
    """
    from mlflow.exceptions import MlflowException

    match = _MODEL_URI.match(model_uri)
    if match is None:
        raise ModelRegistryError(
            f"--model {model_uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS (a registered model)"
        )
    name, version, alias = match["name"], match["version"], match["alias"]
    client = check_model_registry(tracking_uri)
    store = _store_text(client)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        found = ", ".join(names) if names else "none"
        raise ModelRegistryError(
            f"{store} has no registered model {name!r} (registered models: {found})"
        ) from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = ", ".join(f"@{a} -> {v}" for a, v in sorted((registered.aliases or {}).items())) or "none"
    existing = f"versions: {', '.join(map(str, versions)) or 'none'}; aliases: {aliases}"
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException:
        what = f"alias @{alias}" if alias is not None else f"version {version}"
        raise ModelRegistryError(f"{store}: registered model {name!r} has no {what} ({existing})") from None


def _download_bundle(model_uri: str, destination: Path) -> Path:
    """Download the MLflow model ``model_uri`` (tracking URI already set) into ``destination``;
    returns its bundle folder (found through the model's ``MLmodel`` file)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    local = Path(download_artifacts(artifact_uri=model_uri, dst_path=str(destination)))
    flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    entry = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT)
    if not entry:
        raise ModelRegistryError(
            f"{model_uri} is not a model logged by unet-med: its MLmodel has no {BUNDLE_ARTIFACT!r} artifact"
        )
    return local / entry["path"]


def download_model_bundle(model_uri: str, tracking_uri: str, destination: str | os.PathLike) -> Path:
    """Download the registered model ``model_uri`` (``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS``) from ``tracking_uri`` into ``destination`` and return its bundle folder,
    ready for :func:`~unet_med.inference.bundle_loading.load_bundle`.

    Raises:
        ModelRegistryError: see :func:`resolve_model_version`.
    """
    from unet_med.tracking.store import using_tracking_uri

    version = resolve_model_version(model_uri, tracking_uri)
    with using_tracking_uri(tracking_uri):
        return _download_bundle(f"models:/{version.name}/{version.version}", Path(destination))


# -- the Ignite handler --------------------------------------------------------------------------
class BestModelLogger:
    """Ignite handler: at the end of a training, logs the best checkpoint as an MLflow model in the
    tracker's run (:func:`log_bundle_model`) and, given ``registered_model_name``
    (``--register_model NAME``), registers it. With a name, the store's Model Registry is checked
    when the training starts, so a store without one fails before the first epoch.

    Attach to the trainer after the checkpoint handler (whose ``COMPLETED`` handler writes the
    final ``model.pt``) and before the tracker (which then marks the run finished).

    Args:
        tracker: the :class:`~unet_med.tracking.tracker.MLflowTracker` of the training.
        checkpoint: the :class:`~unet_med.handlers.checkpoint.TrainingCheckpoint` (its ``models_dir``).
        bundle_root: the bundle folder whose ``configs/`` go with the model.
        registered_model_name: Model Registry name; None or "" logs without registering.
    """

    def __init__(
        self,
        tracker: Any,
        checkpoint: Any,
        bundle_root: str | os.PathLike,
        registered_model_name: str | None = None,
    ) -> None:
        self.tracker = tracker
        self.checkpoint = checkpoint
        self.bundle_root = Path(bundle_root)
        self.registered_model_name = str(registered_model_name) if registered_model_name else None
        self.logged: LoggedBundleModel | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events
        from monai.engines import Evaluator

        if isinstance(engine, Evaluator) or not is_main_process():
            return
        if not engine.has_event_handler(self.check_registry, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.check_registry)
            engine.add_event_handler(Events.COMPLETED, self.log_model)

    def check_registry(self, engine=None) -> None:
        """With a registered-model name: fail now when the store has no Model Registry."""
        if self.registered_model_name:
            check_model_registry(self.tracker.tracking_uri)

    def log_model(self, engine=None) -> LoggedBundleModel | None:
        """Log (and register) ``models_dir/model.pt``; None when the run or the weights are missing."""
        if self.tracker.run_id is None or not (self.checkpoint.models_dir / _WEIGHTS).is_file():
            return None
        self.tracker.flush()  # the logged model copies the run's metrics
        self.logged = log_bundle_model(
            self.tracker.tracking_uri, self.tracker.run_id, self.bundle_root, self.checkpoint.models_dir,
            registered_model_name=self.registered_model_name,
        )
        self.tracker.set_tags({"unet_med.model_uri": self.logged.model_uri})
        if self.logged.registered_version is not None:
            logger.info(
                "registered model models:/%s/%s; segment with: unet-med infer --model models:/%s/%s "
                "--tracking-uri %s --input SCANS_DIR --output OUT_DIR",
                self.registered_model_name, self.logged.registered_version, self.registered_model_name,
                self.logged.registered_version, self.tracker.tracking_uri,
            )
        return self.logged
