"""The MLflow UI in a real browser: a sweep's parent and child runs in the runs table, their metrics as charts.

Saves what it sees as mlflow_runs.png, mlflow_charts.png and, for the sweep's parameters against
its test accuracy as parallel coordinates, mlflow_parallel.png. By default on a tiny 2 x 2 sweep
it makes itself; the README's pictures (reports/ui/) show the real default sweep:

    dvc repro && MNIST_PIPELINE_UI_PROJECT=. MNIST_PIPELINE_SCREENSHOTS=reports/ui \
        .venv/bin/python -m pytest tests/test_mlflow_browser.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import http_get, mlflow_service, run_module
from mlflow.tracking import MlflowClient

from pipeline.core.paths import PACKAGE_CHECKOUT
from pipeline.core.store import tracking_uri
from pipeline.sweeps.callback import SWEEP_ROLE_TAG

try:
    from playwright.sync_api import Locator, Page, expect, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
except ImportError:
    sync_playwright = None

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Without these, headless Chromium hangs on the network calls this sandbox blocks.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TABLE_COLUMNS = ["optimizer.name", "train.batch_size", "val_loss", "test_accuracy"]
HIDDEN_COLUMNS = ["Dataset", "Source", "Models"]
LOSS_CHARTS = ["loss", "val_loss", "test_loss", "step_val_loss", "final_val_loss"]
PARALLEL_PARAMS = ["optimizer.name", "train.batch_size"]
PARALLEL_METRIC = "test_accuracy"
# Screenshots go to the test's own folder; MNIST_PIPELINE_SCREENSHOTS=reports/ui refreshes the README's.
SCREENSHOTS_ENV = "MNIST_PIPELINE_SCREENSHOTS"
# A project whose store holds a real sweep (after dvc repro), instead of the tiny one the test makes.
PROJECT_ENV = "MNIST_PIPELINE_UI_PROJECT"
SHOWN_CHILDREN = 4  # child runs checked by name in the table (all of a tiny sweep)
FIRST_RENDER_MS = 90_000
UI_TIMEOUT_MS = 30_000
# The parallel-coordinates chart draws its lines on a canvas: count the lines crossing the column a quarter
# of the way from the first axis to the second (optimizer.name to train.batch_size, where no two runs meet).
COUNT_LINES_JS = """wrapper => {
  const canvas = wrapper.querySelector("canvas.foreground");
  const axes = [...wrapper.querySelectorAll("svg g.dimension")].map(g => g.transform.baseVal.consolidate().matrix.e);
  if (!canvas || canvas.clientWidth === 0 || axes.length < 2) return -1;
  const x = Math.round((axes[0] + (axes[1] - axes[0]) / 4) * (canvas.width / canvas.clientWidth));
  const pixels = canvas.getContext("2d").getImageData(x, 0, 1, canvas.height).data;
  let lines = 0;
  for (let y = 0; y < canvas.height; y++) {
    if (pixels[4 * y + 3] > 0 && (y === 0 || pixels[4 * (y - 1) + 3] === 0)) lines++;
  }
  return lines;
}"""


def require_browser() -> None:
    """Fail in CI, skip elsewhere, when the system Chromium or Playwright is missing."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)"
    elif sync_playwright is None:
        missing = "the playwright Python package is missing: pip install playwright"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(missing)
    pytest.skip(missing)


def latest_sweep(cfg) -> tuple[str, list[str], list[float]]:
    """The latest sweep's parent run name, its children's names and their test accuracies."""
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get(SWEEP_ROLE_TAG) == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    children.sort(key=lambda r: r.info.start_time)
    return (
        parent.info.run_name,
        [r.info.run_name for r in children],
        [r.data.metrics["test_accuracy"] for r in children],
    )


def experiment_id(base: str, name: str) -> str:
    _, body = http_get(f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name={name}")
    return json.loads(body)["experiment"]["experiment_id"]


def open_runs_table(page: Page, base: str, exp_id: str, parent: str) -> None:
    """The experiment's runs table; `#/experiments/<id>` alone lands on the GenAI overview."""
    page.goto(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
    expect(page.get_by_role("link", name=parent, exact=True)).to_be_visible(timeout=FIRST_RENDER_MS)
    assistant_close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if assistant_close.count():
        assistant_close.click()


def expand_parent(page: Page, parent: str, children: list[str]) -> None:
    """Unfold the child runs: the only button in the parent's Run Name cell is its expander."""
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=parent, exact=True))
    row.locator('[col-id="attributes.`Run Name`"] button').click()
    for name in children[-SHOWN_CHILDREN:]:  # the newest child runs come first in the table
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)


def choose_columns(page: Page) -> None:
    """Show the sweep's parameters and key metrics instead of Dataset/Source/Models; fit the run names."""
    page.get_by_role("button", name="Columns", exact=True).click()
    dialog = page.get_by_role("dialog")
    for column in HIDDEN_COLUMNS + TABLE_COLUMNS:
        dialog.get_by_text(column, exact=True).click()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden(timeout=UI_TIMEOUT_MS)
    for column in TABLE_COLUMNS:
        expect(page.get_by_role("columnheader", name=column, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.locator('.ag-header-cell[col-id="attributes.`Run Name`"] .ag-header-cell-resize').dblclick()


def show_loss_charts(page: Page, children: list[str]) -> None:
    """Chart view filtered to the loss metrics: curves for loss/val_loss, bars for test_loss."""
    page.locator("label").filter(has=page.locator('input[name="runs-view-mode"][value="CHART"]')).click()
    # The charts show the first 10 runs unless told otherwise (a real sweep has 36).
    expect(page.get_by_placeholder("Search metric charts")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.get_by_test_id("experiment-view-runs-visibility-column-header").click()
    page.get_by_role("menuitemradio").filter(has_text="Show all runs").click()
    # Charts render lazily, section by section (a real sweep's parent has a chart per cell aggregate): filter first.
    page.get_by_placeholder("Search metric charts").fill("loss")
    expect(page.get_by_role("heading", name="loss", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    cards = page.get_by_test_id("experiment-view-compare-runs-card")
    expect(cards).to_have_count(len(LOSS_CHARTS), timeout=UI_TIMEOUT_MS)
    for title in LOSS_CHARTS:
        expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    curves = cards.filter(has=page.get_by_role("heading", name="val_loss", exact=True))
    expect(curves.locator("path.js-line").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    bars = cards.filter(has=page.get_by_role("heading", name="test_loss", exact=True))
    if len(children) <= SHOWN_CHILDREN:  # a tiny sweep: every run is one bar
        expect(bars.locator(".barlayer .point")).to_have_count(len(children), timeout=UI_TIMEOUT_MS)
        for name in children:
            expect(bars.get_by_text(name, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    else:
        expect(bars.locator(".barlayer .point").first).to_be_visible(timeout=UI_TIMEOUT_MS)


def choose_options(page: Page, field: Locator, names: list[str]) -> None:
    """Pick `names` in the field's multi-select. Its list is virtual and cannot be typed into: walk it with the keys."""
    select = field.get_by_role("combobox")
    select.click()
    listbox = select.get_attribute("id") + "_list"
    dropdown = page.locator('[class*="-select-dropdown"]', has=page.locator(f'[id="{listbox}"]'))
    active = dropdown.locator('[class*="-select-item-option-active"]')
    for name in names:
        for _ in range(1000):  # a real store lists a metric per cell aggregate
            if active.get_attribute("title") == name:
                break
            page.keyboard.press("ArrowDown")
        expect(active).to_have_attribute("title", name)
        page.keyboard.press("Enter")
        expect(field).to_contain_text(name)
    page.keyboard.press("Escape")
    expect(dropdown).to_be_hidden(timeout=UI_TIMEOUT_MS)


def expect_lines(page: Page, plot: Locator, count: int) -> None:
    """Wait until the parallel-coordinates `plot` has drawn one line per run."""
    try:
        page.wait_for_function(f"el => ({COUNT_LINES_JS})(el) === {count}", arg=plot.element_handle())
    except PlaywrightTimeoutError:
        pytest.fail(f"the parallel coordinates show {plot.evaluate(COUNT_LINES_JS)} lines, not {count}")


def show_parallel_coordinates(page: Page, children: list[str], accuracies: list[float]) -> None:
    """Chart view: Add chart > Parallel coordinates over the sweep's params and test accuracy, opened full screen."""
    search = page.get_by_placeholder("Search metric charts")
    search.fill("")
    page.get_by_test_id("experiment-view-compare-runs-add-chart").first.click()
    page.get_by_test_id("experiment-view-compare-runs-chart-type-parallel").click()
    dialog = page.get_by_role("dialog").filter(has=page.get_by_text("Add new chart", exact=True))
    fields = dialog.get_by_test_id("experiment-view-compare-runs-config-field")
    choose_options(page, fields.filter(has=page.get_by_role("heading", name="Params", exact=True)), PARALLEL_PARAMS)
    choose_options(page, fields.filter(has=page.get_by_role("heading", name="Metrics", exact=True)), [PARALLEL_METRIC])
    dialog.get_by_test_id("experiment-view-compare-runs-chart-modal-confirm").click()
    expect(dialog).to_be_hidden(timeout=UI_TIMEOUT_MS)
    # The new chart goes last in a section whose cards render lazily; a parameter name finds it alone.
    search.fill(PARALLEL_PARAMS[0])
    cards = page.get_by_test_id("experiment-view-compare-runs-card")
    expect(cards).to_have_count(1, timeout=UI_TIMEOUT_MS)
    card = cards.filter(has=page.get_by_role("heading", name="Parallel Coordinates", exact=True))
    card.locator('button[data-component-id="fullscreen_button_chartcard"]').click()
    plot = page.get_by_role("dialog").locator(".parcoords")
    for axis in PARALLEL_PARAMS + [PARALLEL_METRIC]:
        expect(plot.locator("svg text.label").filter(has_text=axis)).to_be_visible(timeout=UI_TIMEOUT_MS)
    for tick in ["adam", "sgd"]:
        expect(plot.locator("svg g.tick text").filter(has_text=tick)).to_be_visible(timeout=UI_TIMEOUT_MS)
    if len(children) <= SHOWN_CHILDREN:
        expect_lines(page, plot, len(children))
    else:  # a real sweep: the last axis spans the runs' test accuracies, so it tells the cells apart
        last_axis = plot.locator("svg g.dimension").last.locator("g.tick text")
        expect(last_axis.first).to_be_visible(timeout=UI_TIMEOUT_MS)
        ticks = [float(t) for t in last_axis.all_text_contents() if t.strip()]
        assert len(ticks) >= 3 and min(ticks) <= sorted(accuracies)[len(accuracies) // 2] <= max(ticks), ticks


def test_browser_shows_sweep_runs_and_their_charts(tiny_data_cfg, tmp_path):
    require_browser()
    screenshots = PACKAGE_CHECKOUT / os.environ[SCREENSHOTS_ENV] if os.environ.get(SCREENSHOTS_ENV) else tmp_path
    if os.environ.get(PROJECT_ENV):
        from conftest import compose_config

        cfg = compose_config((PACKAGE_CHECKOUT / os.environ[PROJECT_ENV]).resolve())
    else:
        cfg = tiny_data_cfg()
        root = Path(cfg.paths.root)
        result = run_module(
            "pipeline.experiment", "-m", f"paths.root={root}", "train.epochs=2", "sweep=none",
            "optimizer=sgd,adam", "train.batch_size=16,64",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parent, children, accuracies = latest_sweep(cfg)
    if not os.environ.get(PROJECT_ENV):
        assert parent.startswith("sweep-") and sorted(children) == ["adam-bs16", "adam-bs64", "sgd-bs16", "sgd-bs64"]
    screenshots.mkdir(parents=True, exist_ok=True)

    with mlflow_service("ui", "--backend-store-uri", cfg.tracking.uri) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            open_runs_table(page, base, experiment_id(base, cfg.tracking.experiment), parent)
            expand_parent(page, parent, children)
            choose_columns(page)
            page.screenshot(path=screenshots / "mlflow_runs.png")
            show_loss_charts(page, children)
            page.screenshot(path=screenshots / "mlflow_charts.png")
            show_parallel_coordinates(page, children, accuracies)
            page.screenshot(path=screenshots / "mlflow_parallel.png")
        finally:
            browser.close()


def test_the_sweep_report_is_one_self_contained_page(tiny_data_cfg):
    """reports/sweep/report.html: the verdict and the cells table on the page, images inline, nothing fetched."""
    require_browser()
    from pipeline.compare import compare_sweep

    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    run_module("pipeline.experiment", "-m", f"paths.root={root}", "train.epochs=1", "sweep=none",
               "optimizer=sgd,adam", "sweep.seeds=2")  # fmt: skip
    result = compare_sweep(cfg)
    page_file = root / "reports" / "sweep" / "report.html"
    text = page_file.read_text()
    assert "http://" not in text and "https://" not in text, "self-contained: nothing to fetch"
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    assert "comparison/report.html" in {a.path for a in client.list_artifacts(result["parent_run_id"], "comparison")}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            expect(page.locator("#answer")).to_contain_text(f"Chosen on validation: {result['winner']['cell']}")
            rows = page.locator("table").first.locator("tbody tr")
            expect(rows).to_have_count(len(result["cells"]))
            for cell in result["cells"]:
                expect(page.locator("table").first).to_contain_text(cell["cell"])
            assert page.locator("img").count() == 2
            assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
        finally:
            browser.close()
