"""Browser test: ``dagster dev`` from the repository root, driven through the real UI in headless
Chromium (Debian's chromium + chromedriver, installed by .ci/run).

The test starts ``dagster dev`` on a free port of 127.0.0.1 with a tiny params.yaml and a fresh
DAGSTER_HOME (holding pipelines/dagster.yaml), opens the ``data`` asset group, checks that the
graph shows the four data assets, clicks "Materialize all", selects all partitions, launches the
run and watches the run page until it reports success. On failure a screenshot and the server
log are left in the test's tmp folder and named in the message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pipelines_support import DATASET, REPO_ROOT, subprocess_env, tiny_params, venv_bin, write_params
from tests.browser_support import headless_chromium, require_browser
from tests.servers import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SERVER_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240
DATA_ASSETS = ("raw_files", "keypoint_tables", "clip_index", "masked_inputs")
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")

webdriver = require_browser()
from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


def location_names(url: str) -> list[str]:
    data = graphql(url, "{ workspaceOrError { ... on Workspace { locationEntries { name "
                        "locationOrLoadError { __typename } } } } }")
    entries = data["workspaceOrError"]["locationEntries"]
    return [e["name"] for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"]


def wait_for_server(url: str, process: subprocess.Popen, log: Path) -> str:
    """Wait until the webserver answers and the code location has loaded; returns its name."""
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            names = location_names(url)
            if names:
                return names[0]
        except OSError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"dagster dev did not serve {url} within {SERVER_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop dagster dev like Ctrl-C does; its process group (webserver, daemon, code server) if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):  # what is left of the group (a code server may linger)
        try:
            os.killpg(process.pid, sig)  # the group this test created with start_new_session
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def dagster_dev(tmp_path):
    params = write_params(tmp_path, tiny_params(tmp_path / "artifacts"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "pipelines" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    log = tmp_path / "dagster-dev.log"
    env = subprocess_env(DUALPOSE_PARAMS=str(params), DAGSTER_HOME=str(home))
    with open(log, "wb") as out:
        process = subprocess.Popen([venv_bin("dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO_ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        location = wait_for_server(url, process, log)
        yield {"url": url, "location": location, "log": log, "root": tmp_path / "artifacts"}
    finally:
        stop(process)


@pytest.fixture
def browser(tmp_path):
    yield from headless_chromium(tmp_path, ("--disable-quic", "--disable-sync"))


def button(driver, starts_with: str):
    """A visible, enabled button whose text starts with ``starts_with`` (or None)."""
    for element in driver.find_elements(By.TAG_NAME, "button"):
        if element.is_displayed() and element.is_enabled() and element.text.strip().startswith(starts_with):
            return element
    return None


def dismiss_popups(driver) -> None:
    """The first visit shows a 'Join the Dagster community' dialog; skip it."""
    skip = button(driver, "Skip")
    if skip is not None:
        try:
            skip.click()
            WebDriverWait(driver, 10).until(lambda d: button(d, "Skip") is None)
        except (StaleElementReferenceException, TimeoutException):
            pass


def click(driver, find, timeout: float = 60.0):
    """Click what ``find(driver)`` returns once it exists; a dialog that pops up over it is skipped first."""
    deadline = time.monotonic() + timeout
    while True:
        element = find(driver)
        try:
            if element is None:
                raise TimeoutException("not there yet")
            element.click()
            return element
        except (ElementClickInterceptedException, StaleElementReferenceException, TimeoutException):
            if time.monotonic() > deadline:
                raise
            dismiss_popups(driver)
            time.sleep(0.5)


def run_status(url: str, run_id: str) -> str:
    data = graphql(url, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}')
    return data["runOrError"].get("status", "")


def test_ui_shows_graph_and_materialises_the_data_assets(dagster_dev, browser, tmp_path):
    url, location = dagster_dev["url"], dagster_dev["location"]
    wait = WebDriverWait(browser, 60, poll_frequency=0.5)
    try:
        # the asset graph of the "data" group: the four data assets, and the training assets downstream
        browser.get(f"{url}/locations/{location}/asset-groups/data")
        for name in DATA_ASSETS:
            wait.until(EC.visibility_of_element_located((By.XPATH, f"//*[normalize-space(text())='{name}']")))
        dismiss_popups(browser)
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "pretrained_weights" in body  # downstream of masked_inputs, drawn as a link out of the group

        # Materialize all -> every partition (the data sets of params.yaml) -> launch
        click(browser, lambda d: button(d, "Materialize all"))
        click(browser, lambda d: next((b for b in d.find_elements(By.TAG_NAME, "button")
                                       if b.is_displayed() and b.text.strip() == "All"), None))
        click(browser, lambda d: button(d, "Launch 1 run"))
        toast = wait.until(EC.visibility_of_element_located((By.XPATH, "//*[starts-with(normalize-space(), "
                                                                       "'Launched run ')]")))
        short_id = toast.text.split("Launched run ", 1)[1].split()[0]

        # wait with the browser idle (a live run page costs CPU that the run needs), then see the run page
        runs = graphql(url, "{ runsOrError(limit: 5) { ... on Runs { results { runId tags { key value } } } } }")
        run = next(r for r in runs["runsOrError"]["results"] if r["runId"].startswith(short_id))
        run_id = run["runId"]
        assert {"key": "dagster/partition", "value": DATASET} in run["tags"]
        browser.get("about:blank")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        status = run_status(url, run_id)
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(2.0)
            status = run_status(url, run_id)
        browser.get(f"{url}/runs/{run_id}")
        shown = wait.until(EC.visibility_of_element_located(
            (By.XPATH, "//*[normalize-space(text())='Success' or normalize-space(text())='Failure' or "
                       "normalize-space(text())='Canceled']")))
        assert (shown.text.strip(), status) == ("Success", "SUCCESS"), f"run {run_id} ended {status}"
        # the step list fills in as the run's events load: wait for all 9 steps (4 assets, 5 checks)
        wait.until(EC.visibility_of_element_located((By.XPATH, "//*[normalize-space(text())='Succeeded (9)']")))
        assert (dagster_dev["root"] / "masked" / f"{DATASET}.parquet").is_file()
    except (AssertionError, TimeoutException) as exc:
        shot = tmp_path / "failure.png"
        browser.save_screenshot(str(shot))
        log_tail = dagster_dev["log"].read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\nscreenshot: {shot}\ndagster dev log (tail):\n{log_tail}") from exc
