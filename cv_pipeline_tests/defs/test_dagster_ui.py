"""The Dagster UI as a user sees it: `dagster-webserver` on this code location, over the instance the
end-to-end run left (`end_to_end_run`), driven through the system's headless Chromium with Selenium.

Needs the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver;
`.ci/run` installs them); nothing is downloaded. Each test saves screenshots of the pages it checked
in its tmp_path.
"""

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} missing: install the Debian packages "
                       "chromium and chromium-driver (apt-get install -y chromium chromium-driver) for the "
                       "Dagster UI tests"),
]

REPO = Path(__file__).resolve().parents[2]
LOCATION = "cv_pipeline"  # workspace.yaml's location_name
HELD_BACK_CHECK = "annotations_bbox_inside_image"
PAGE_TIMEOUT = 240  # seconds: the UI renders slowly on a busy 2-core machine
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1600,2600", "--hide-scrollbars")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """The webserver and the code server it spawned: their whole process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=30)
            if sig == signal.SIGTERM:
                time.sleep(1)  # the code server stops after its parent: then nothing is left to kill
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def dagster_ui(end_to_end_run, tmp_path_factory):
    """Base URL of a read-only `dagster-webserver -w workspace.yaml` on the end-to-end run's
    DAGSTER_HOME, on a free loopback port; stopped (process group) when the module's tests are done."""
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(end_to_end_run.dagster_home)}
    if getattr(end_to_end_run, "home", None):  # the run's CV_PIPELINE_HOME, else this session's
        env["CV_PIPELINE_HOME"] = str(end_to_end_run.home)
    log_path = tmp_path_factory.mktemp("dagster_webserver") / "webserver.log"
    with open(log_path, "wb") as log:
        # read-only: the tests look, they never launch anything; a slow live-data poll spares the CPU
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
             "-p", str(port), "--read-only", "--live-data-poll-rate", "10000", "--suppress-warnings"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/server_info", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer within 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser(dagster_ui, tmp_path_factory, monkeypatch_module):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch_module.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a browser or driver
    profile = tmp_path_factory.mktemp("chromium_profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        # The UI greets a loopback origin with a "join the community" dialog that would cover the
        # pages: mark it seen in this profile's local storage.
        driver.get(f"{dagster_ui}/server_info")
        driver.execute_script("window.localStorage.setItem('communityNux', '\"1\"')")
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def instance(end_to_end_run):
    """The end-to-end run's Dagster instance, read directly: what the UI should show."""
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(str(end_to_end_run.dagster_home))
    try:
        yield instance
    finally:
        instance.dispose()


class Page:
    """One page of the UI in the browser: waits for what it should show and keeps a screenshot."""

    def __init__(self, driver, base_url: str, folder: Path):
        self.driver, self.base_url, self.folder = driver, base_url, folder

    def open(self, path: str) -> "Page":
        self.driver.get(self.base_url + path)
        return self

    def body_text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait_for(self, condition, what, name: str, timeout: float = PAGE_TIMEOUT):
        """Waits until `condition(driver)` is truthy and returns it; screenshot `name`.png either way.
        `what` (a string, or a callable giving one) says what did not show, if it does not."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            value = WebDriverWait(self.driver, timeout, poll_frequency=1,
                                  ignored_exceptions=(StaleElementReferenceException,)).until(condition)
        except TimeoutException:
            self.screenshot(name)
            pytest.fail(f"{self.driver.current_url}: {what() if callable(what) else what} not shown within "
                        f"{timeout} s (screenshot {self.folder / name}.png); the page reads:\n{self.body_text()[:4000]}")
        self.screenshot(name)
        return value

    def wait_for_texts(self, texts, name: str) -> str:
        """Waits until the page shows every one of `texts`; returns the page's text."""
        texts = list(texts)

        def all_shown(driver):
            body = self.body_text()
            return body if all(text in body for text in texts) else False

        return self.wait_for(all_shown, lambda: f"{[t for t in texts if t not in self.body_text()]}", name)

    def click_tab(self, title: str) -> None:
        from selenium.webdriver.common.by import By

        def tab(driver):
            found = [e for e in driver.find_elements(By.XPATH, f"//button[@role='tab'][normalize-space()='{title}']")
                     if e.is_displayed()]
            return found[0] if found else False

        self.wait_for(tab, f"tab {title!r}", f"tab_{title.replace(' ', '_')}").click()

    def screenshot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.folder / f"{name}.png"))


@pytest.fixture
def page(browser, dagster_ui, tmp_path) -> Page:
    return Page(browser, dagster_ui, tmp_path)


def _asset_graph():
    from cv_pipeline.definitions import defs

    return defs.resolve_asset_graph()


def _shown_asset_links(driver) -> set[str]:
    """Asset keys the page links to from a visible element (names are shortened in the middle when
    long, their links never)."""
    from selenium.webdriver.common.by import By

    keys = set()
    for link in driver.find_elements(By.CSS_SELECTOR, "a[href^='/assets/']"):
        href = link.get_attribute("href").split("/assets/", 1)[1].split("?")[0]
        if href and link.is_displayed():
            keys.add(href)
    return keys


def test_the_catalog_and_lineage_show_every_asset_and_group(page):
    graph = _asset_graph()
    nodes = {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()
             if graph.get(key).is_materializable}
    groups = sorted({node.group_name for node in nodes.values()})

    # the catalog: one row per asset with its description (opening words), group and code location
    page.open("/assets")
    assert all(node.description for node in nodes.values()), [k for k, n in nodes.items() if not n.description]
    page.wait_for_texts([*groups, LOCATION], "catalog")

    def every_asset_linked(driver):
        return _shown_asset_links(driver) >= set(nodes)

    page.wait_for(every_asset_linked, f"links to every asset {sorted(nodes)}", "catalog")
    body = page.body_text()
    for key, node in nodes.items():
        opening = " ".join(node.description.split()[:4])
        assert opening in body, (key, opening)

    # the global lineage lists every group; each group's page lists its assets
    page.open("/asset-groups")
    page.wait_for_texts(groups, "lineage")
    for group in groups:
        members = sorted(k for k, n in nodes.items() if n.group_name == group)
        page.open(f"/locations/{LOCATION}/asset-groups/{group}/list")
        page.wait_for(lambda driver, members=members: _shown_asset_links(driver) >= set(members),
                      f"group {group} listing {members}", f"group_{group}")


def _materialization_metadata(instance, asset: str) -> dict:
    from dagster import AssetKey

    event = instance.get_latest_materialization_event(AssetKey(asset))
    assert event is not None, f"the end-to-end run did not materialize {asset}"
    return event.asset_materialization.metadata


# plots each evaluation must show (the rest come from what the run recorded)
EXPECTED_PLOTS = {
    "classification_evaluation": {"plot_confusion_matrix"},
    "detection_evaluation": {"plot_pr_curves", "plot_ap_per_class", "plot_error_breakdown"},
    "semantic_segmentation_evaluation": {"plot_iou_per_class", "plot_confusion_matrix"},
}


def _dialog_image(driver):
    """The inline PNG the "[Show Markdown]" dialog shows, once loaded: its natural and drawn size."""
    image = driver.execute_script("""
        const img = Array.from(document.querySelectorAll("img[src^='data:image/png']"))
            .find(img => img.closest("[role='dialog'], .bp5-dialog, .bp5-overlay"));
        if (!img || !img.complete || img.naturalWidth === 0) return null;
        const box = img.getBoundingClientRect();
        if (Math.abs(box.width - img.offsetWidth) > 1) return null;  // the dialog is still zooming in
        return {naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, width: img.offsetWidth,
                height: img.offsetHeight, left: box.left, right: box.right, alt: img.alt};""")
    return image or False


def _filter_metadata(page, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = page.wait_for(lambda driver: next((e for e in driver.find_elements(
        By.CSS_SELECTOR, "input[placeholder='Filter metadata keys']") if e.is_displayed()), False),
        "the metadata filter", "metadata_filter")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(text)


@pytest.mark.parametrize("asset", sorted(EXPECTED_PLOTS))
def test_an_evaluation_shows_its_metrics_and_plots(page, instance, asset):
    from dagster import FloatMetadataValue, MarkdownMetadataValue
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from cv_pipeline.evaluation.plots import MARKDOWN_MAX_WIDTH

    metadata = _materialization_metadata(instance, asset)
    metrics = {key: value.value for key, value in metadata.items()
               if isinstance(value, FloatMetadataValue) and value.value is not None}
    plots = sorted(key for key, value in metadata.items()
                   if isinstance(value, MarkdownMetadataValue) and "data:image/png;base64," in value.value)
    assert metrics and EXPECTED_PLOTS[asset] <= set(plots), (asset, sorted(metadata))

    # every metric by name with its value, as JavaScript prints the number
    page.open(f"/assets/{asset}")
    shown = {key: page.driver.execute_script("return String(arguments[0])", value) for key, value in metrics.items()
             if math.isfinite(value)}
    page.wait_for_texts([asset, "per_class", *metrics, *shown.values(), *plots], "overview")

    # each plot: its metadata row's "[Show Markdown]" opens a dialog drawing the PNG, whole and at
    # most MARKDOWN_MAX_WIDTH wide
    for plot in plots:
        _filter_metadata(page, plot)
        page.wait_for(lambda driver, plot=plot: next(
            (e for e in driver.find_elements(By.XPATH, "//*[normalize-space(text())='[Show Markdown]']")
             if e.is_displayed()), False), f"{plot}'s [Show Markdown]", f"{plot}_row").click()
        image = page.wait_for(_dialog_image, f"{plot} drawn as an image", plot)
        viewport = page.driver.execute_script("return document.documentElement.clientWidth")
        assert 200 <= image["naturalWidth"] <= MARKDOWN_MAX_WIDTH and image["naturalHeight"] >= 100, (plot, image)
        assert abs(image["width"] - image["naturalWidth"]) <= 1, (plot, image)  # drawn at its size, not squeezed
        assert 0 <= image["left"] and image["right"] <= viewport, (plot, image)  # whole, inside the window
        page.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        page.wait_for(lambda driver: not _dialog_image(driver), f"{plot}'s dialog closed", f"{plot}_closed")


def test_the_failed_blocking_check_shows_failed(page, instance, end_to_end_run):
    from dagster import DagsterRunStatus, RunsFilter

    held_back = end_to_end_run.held_back_batch
    runs = instance.get_runs(RunsFilter(tags={"dagster/partition": held_back}))
    assert runs, f"no run for partition {held_back}"
    run = runs[0]
    assert run.status == DagsterRunStatus.FAILURE, run.status

    # the asset's Checks tab: the blocking check, its description, and a failed evaluation from
    # the held-back batch's run
    page.open(f"/assets/coco_annotations?view=checks&checkDetail={HELD_BACK_CHECK}")
    page.wait_for_texts([HELD_BACK_CHECK, "This is a blocking asset check."], "checks")
    page.click_tab("Execution history")

    def failed_row(driver):
        from selenium.webdriver.common.by import By

        for row in driver.find_elements(By.CSS_SELECTOR, "table tr"):
            links = [a.get_attribute("href") or "" for a in row.find_elements(By.TAG_NAME, "a")]
            if row.text.startswith("Failed") and any(run.run_id in link for link in links):
                return row
        return False

    page.wait_for(failed_row, f"a Failed evaluation of {HELD_BACK_CHECK} from run {run.run_id[:8]}",
                  "check_history")

    # the run of the held-back batch: failed, naming its partition and the failed check
    page.open(f"/runs/{run.run_id}")
    page.wait_for_texts(["Failure", f"partition: {held_back}", HELD_BACK_CHECK], "run")
