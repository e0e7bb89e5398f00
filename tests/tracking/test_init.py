"""unet_med.tracking (the package): the names bundles and commands use resolve, and importing it,
or the server module the console command loads for ``--help``, pulls in no heavy library."""

from __future__ import annotations

import subprocess
import sys

import unet_med.tracking as tracking


def test_every_exported_name_resolves_to_its_module():
    for name in tracking.__all__:
        value = getattr(tracking, name)
        assert value is not None, name
    assert tracking.MLflowTracker.__module__ == "unet_med.tracking.tracker"
    assert tracking.log_evaluation.__module__ == "unet_med.tracking.linked_runs"
    assert tracking.RUN_FILE == "mlflow_run.json"
    assert set(tracking.__all__) <= set(dir(tracking))


def test_importing_the_package_and_the_server_stays_light():
    code = (
        "import sys, unet_med.tracking, unet_med.tracking.server, pipelines.mlflow_server; "
        "print(sorted(m for m in ('torch', 'mlflow', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
