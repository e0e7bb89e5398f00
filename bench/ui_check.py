"""What a user sees in MLflow's UI, checked in a real browser: two tiny demo trainings, ``mlflow
server`` on their store, headless Chromium driven to the runs-table URL the trainings print.

    python bench/ui_check.py --out docs/images        # or: make ui-check

Steps: write the demo data set (6 images of 64x64), train the 2D paper bundle twice from one
working folder into two output folders (widths 4 and 8, 3 epochs; no ``--tracking_uri``, so both
land in the folder's default store), start ``mlflow server`` on that store on a free loopback port,
take the URL the training printed ("then open http://127.0.0.1:5000/#/experiments/...") onto that
port, and let Debian's ``chromium`` (``apt-get install chromium``) render it headless: the page's
DOM (``--dump-dom``) is checked and screenshots (``--screenshot``) of the runs table and of the
compare-charts view (``&compareRunsMode=CHART``) are saved as PNGs in ``--out``.

It fails (exit 1, naming what is wrong) when:
- the page is MLflow's GenAI view (traces/sessions) instead of the runs table;
- the runs table lacks the runs, or their Dataset values (``data/manifest [train]`` ...);
- the Models column has no logged model (every training logs its best model as an MLflow model).

Why Chromium's command line and not a browser-automation library: the check needs only a rendered
DOM and two screenshots, which ``chromium --headless`` gives with ``--virtual-time-budget`` (it
waits for the page's timers and requests; 60 s of virtual time, about 10 s of real time here), with
no Python dependency and no browser download at run time.
Not part of ``make test``: it needs Chromium and takes minutes.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "unet2d_paper"
TRAININGS = {"w4": {"base_width": "4", "lr": "0.01"}, "w8": {"base_width": "8", "lr": "0.05"}}
TINY = {
    "epochs": "3", "patch_size": "[20,20]", "aug_prob": "0", "num_workers": "0", "iterations_per_epoch": "4",
}
# Side-bar entries of MLflow's GenAI view that its model-training view lacks (MLflow 3.17 UI texts;
# both views list "Traces").
GENAI_MARKERS = ("Observability", "Sessions", "Prompts")
HINT = re.compile(r"then open (http://\S+/#/experiments/(\d+)/runs\?workflowType=machine_learning)")


class UiCheckError(RuntimeError):
    """What the browser showed is not what a user should see."""


def train(workdir: Path, manifest: Path) -> dict[str, str]:
    """Run the tiny trainings from ``workdir`` (default store ``workdir/mlflow.db``); returns
    ``{name: training log}``."""
    processes = {}
    for name, overrides in TRAININGS.items():
        command = [
            sys.executable, "-m", "monai.bundle", "run", "training",
            "--workflow_name", "unet_med.bundle.UNetMedWorkflow",
            "--config_file", str(BUNDLE / "configs" / "training.json"),
            "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
            "--bundle_root", str(BUNDLE),
            "--output_dir", str(workdir / name),
            "--manifest", str(manifest),
            *[item for key, value in {**TINY, **overrides}.items() for item in (f"--{key}", value)],
        ]
        log = open(workdir / f"{name}.log", "w")
        # this checkout's package, whatever is installed
        path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
        env = dict(os.environ, PYTHONPATH=path)
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes[name] = (process, log)
    logs = {}
    for name, (process, log) in processes.items():
        code = process.wait(timeout=1800)
        log.close()
        logs[name] = (workdir / f"{name}.log").read_text(errors="replace")
        if code != 0:
            raise UiCheckError(f"training {name} failed ({code}):\n{logs[name][-3000:]}")
    return logs


def printed_url(log: str, port: int) -> tuple[str, str]:
    """The runs-table URL a training printed, moved to ``port``; and the experiment id."""
    match = HINT.search(log)
    if match is None:
        raise UiCheckError("the training did not print a runs-table URL ('then open http://...')")
    url = re.sub(r"^http://[^/]+", f"http://127.0.0.1:{port}", match.group(1))
    return url, match.group(2)


def chromium(*args: str, timeout_s: float = 180) -> str:
    """Run headless Chromium with ``args``; returns its stdout."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise UiCheckError("chromium not found: apt-get install -y chromium")
    command = [
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--window-size=1700,850", "--virtual-time-budget=60000", *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    return result.stdout


def page_text(dom: str) -> str:
    """Visible-ish text of a DOM dump: tags and scripts removed, entities decoded, spaces collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


class GridCells(HTMLParser):
    """Texts of the runs table's cells (ag-grid ``role="gridcell"``) by column id
    (``attributes.`Dataset```, ``attributes.`Models```, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, list[str]] = {}
        self._stack: list[str | None] = []  # per open tag: the column id of a cell opened there

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        column = attrs.get("col-id") if attrs.get("role") == "gridcell" else None
        if tag not in ("br", "img", "input", "meta", "link", "hr"):
            self._stack.append(column)
        if column is not None:
            self.cells.setdefault(column, []).append("")

    def handle_endtag(self, tag) -> None:
        if self._stack and tag not in ("br", "img", "input", "meta", "link", "hr"):
            self._stack.pop()

    def handle_data(self, data) -> None:
        open_cells = [c for c in self._stack if c is not None]
        if open_cells:
            self.cells[open_cells[-1]][-1] += data


def grid_cells(dom: str) -> dict[str, list[str]]:
    """``{column id: [cell text, ...]}`` of the runs table in a DOM dump (texts stripped)."""
    parser = GridCells()
    parser.feed(dom)
    return {k: [" ".join(v.split()) for v in values] for k, values in parser.cells.items()}


def check_runs_table(dom: str, run_names: list[str]) -> list[str]:
    """What is wrong with the runs table page (empty when all is well)."""
    problems = []
    text = page_text(dom)
    genai = [marker for marker in GENAI_MARKERS if re.search(rf"\b{marker}\b", text)]
    if "Run Name" not in text or genai:
        problems.append(f"not the runs table (GenAI view markers: {genai or 'none'}; 'Run Name' column "
                        f"{'present' if 'Run Name' in text else 'missing'})")
    cells = grid_cells(dom)
    shown = cells.get("attributes.`Run Name`", [])
    missing = [name for name in run_names if not any(name in cell for cell in shown)]
    if missing:
        problems.append(f"runs missing from the table: {missing} (shown: {shown})")
    datasets = cells.get("attributes.`Dataset`", [])
    if len(datasets) < len(run_names) or not all("manifest [train]" in cell for cell in datasets):
        problems.append(f"the Dataset column lacks 'data/manifest [train]' in some rows: {datasets}")
    models = cells.get("attributes.`Models`", [])
    if len(models) < len(run_names) or any(c in ("", "-") for c in models):
        problems.append(f"the Models column shows no logged model in some rows: {models}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"), help="folder of the screenshots")
    parser.add_argument(
        "--workdir", default=None, help="folder for data, trainings and store (default: a temp folder)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the trainings already in --workdir (their logs and store)"
    )
    args = parser.parse_args(argv)
    if args.reuse and args.workdir is None:
        parser.error("--reuse needs --workdir")

    sys.path.insert(0, str(REPO))
    from unet_med.data.demo import generate_demo_dataset
    from unet_med.tracking.server import TrackingServer, free_loopback_port
    from unet_med.tracking.store import sqlite_store_uri

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ui_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if args.reuse:
        logs = {name: (workdir / f"{name}.log").read_text(errors="replace") for name in TRAININGS}
    else:
        manifest = generate_demo_dataset(workdir / "data", dims=2, n=6, size=64, seed=0)
        logs = train(workdir, manifest)
        print(f"2 trainings in {time.monotonic() - start:.0f} s (store {sqlite_store_uri(workdir)})")
    run_names = sorted(set(re.findall(r"unet2d_paper-paper-\d{8}-\d{6}", "\n".join(logs.values()))))

    port = free_loopback_port()
    problems: list[str] = []
    with TrackingServer(
        backend_store_uri=sqlite_store_uri(workdir), artifacts_destination=str(workdir / "mlartifacts"),
        port=port, log_path=workdir / "server.log",
    ):
        url, experiment_id = printed_url(logs["w4"], port)
        print(f"runs table: {url}")
        problems += check_runs_table(chromium("--dump-dom", url), run_names)
        table_png, charts_png = out / "mlflow_runs_table.png", out / "mlflow_compare_charts.png"
        chromium(f"--screenshot={table_png}", url)
        charts = url + "&compareRunsMode=CHART"
        chart_dom = chromium("--dump-dom", charts)
        # a Dice chart, MLflow's system-metrics section, and charts drawn (not still loading)
        for wanted in ("val_mean_dice", "System metrics", "js-plotly-plot"):
            if wanted not in chart_dom:
                problems.append(f"the compare-charts view ({charts}) shows no {wanted!r}")
        chromium(f"--screenshot={charts_png}", charts)
        for png in (table_png, charts_png):
            if not png.is_file() or png.stat().st_size < 5000:
                problems.append(f"no screenshot at {png}")
            else:
                print(f"screenshot: {png} ({png.stat().st_size // 1024} KiB)")
    if problems:
        print("UI check FAILED:\n- " + "\n- ".join(problems), file=sys.stderr)
        return 1
    print(f"UI check passed in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
