"""The code file of the MLflow model that a training logs (MLflow's "models from code").

MLflow copies this file into the logged model and runs it when the model is loaded, instead of
unpickling a Python object: the model then holds no pickle at all (its network weights are a
``state_dict`` loaded with ``torch.load(weights_only=True)``, see :mod:`unet_med.tracking.models`).
"""

from mlflow.models import set_model

from unet_med.tracking.models import BundleSegmentationModel

set_model(BundleSegmentationModel())
