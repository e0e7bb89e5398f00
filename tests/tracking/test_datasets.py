"""Dataset inputs: two runs logging the same manifest at the same moment both get their inputs."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from unet_med.tracking.datasets import log_dataset_inputs, manifest_dataset


class RacingClient:
    """An MLflow client whose first ``log_inputs`` calls lose the store's dataset-creation race."""

    def __init__(self, failures: int, message: str) -> None:
        self.failures, self.message, self.logged = failures, message, []

    def log_inputs(self, run_id, datasets):
        if self.failures:
            self.failures -= 1
            raise MlflowException(self.message)
        self.logged.append((run_id, [d.dataset.name for d in datasets]))


RACE = "BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name"


def test_a_lost_dataset_creation_race_is_retried_and_other_errors_are_not(demo_manifest, tmp_path):
    manifest = demo_manifest(tmp_path / "data")
    inputs = {"training": manifest_dataset(manifest, "train")}
    client = RacingClient(failures=2, message=RACE)
    log_dataset_inputs(client, "run1", inputs)
    assert client.logged == [("run1", [inputs["training"].name])]
    with pytest.raises(MlflowException, match="UNIQUE"):  # a store that keeps refusing: the error
        log_dataset_inputs(RacingClient(failures=10, message=RACE), "run1", inputs)
    with pytest.raises(MlflowException, match="permission"):  # anything else is not retried
        log_dataset_inputs(RacingClient(failures=1, message="permission denied"), "run1", inputs)
