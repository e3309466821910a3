"""The explorer as `make explore` serves it, in a real browser: Voilà serves notebook 06 (smoke sizes) on a free
port, headless Chromium (the distribution's ``chromium`` and ``chromium-driver``, driven by Selenium) opens the
page, waits for the widgets and the first comparison, moves the sparsity slider one step, and checks that the
status names the new sparsity and that the comparison image's pixels changed. A map bundle written here makes the
page's second part (notebook 04's maps) render too.

Skipped, with the reason, where Chromium, chromedriver, Selenium or Voilà is missing (.ci/run installs them).
``SPADE_EXPLORER_SCREENSHOT=<path.png>`` saves a screenshot of the explorer there (the README's picture);
``SPADE_EXPLORER_TEST_PROFILE`` serves other sizes than smoke (e.g. quick, for that picture).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spade_utils.explorer import MISSING_BUNDLE, bundle_path
from spade_utils.map_bundle import save_map_bundle

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "06_explorer.ipynb"
STUDY_NOTEBOOK = ROOT / "notebooks" / "07_human_study.ipynb"
PAGE_TIMEOUT = 150  # seconds for the page (kernel start, model load, the first trace) and for each change


def _browser() -> tuple[str, str] | None:
    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _missing() -> str | None:
    for module in ("selenium", "voila"):
        if importlib.util.find_spec(module) is None:
            return f"the Python package {module} is not installed (pip install -e '.[dev]')"
    if _browser() is None:
        return "chromium and chromedriver are not on PATH (Debian: apt-get install chromium chromium-driver)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_bundle(results: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 20:28, 20:28] = True
    maps = {(v, "saliency"): torch.randn(2, 32, 32, generator=g) for v in ("dense", "SPADE")}
    return save_map_bundle(
        bundle_path(results),
        images=torch.rand(2, 3, 32, 32, generator=g),
        masks=masks,
        maps=maps,
        aucs={k: [0.61, 0.72] for k in maps},
        sample_names=["poisoned 0", "poisoned 1"],
        size=32,
    )


@contextlib.contextmanager
def _voila(notebook: Path, results: Path, log_path: Path):
    """`make explore` / `make study`'s command on a free port, smoke sizes, results in ``results``; yields the URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SPADE_HEADLESS"}  # a page is not a headless run
    env.update(
        SPADE_PAGE_PROFILE=os.environ.get("SPADE_EXPLORER_TEST_PROFILE", "smoke"),
        SPADE_RESULTS_DIR=str(results),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
    )
    command = [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}"]
    command += ["--strip_sources=True", "--Voila.ip=127.0.0.1"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:  # a connection, not a page: loading the page would start a kernel
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        pytest.fail(f"Voilà did not start: {log_path.read_text()[-2000:]}")
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _voila_flags() -> list[str]:
    return ["--no-browser", "--strip_sources=True", "--Voila.ip="]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target,notebook", [("explore", NOTEBOOK), ("study", STUDY_NOTEBOOK)])
def test_the_make_targets_serve_what_the_tests_serve(target, notebook):
    """`make -n` prints the recipe without running it: the same notebook and flags as the servers here."""
    recipe = subprocess.run(
        ["make", "-n", target, "PROFILE=smoke", "PORT=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = " ".join(recipe.replace("\\\n", " ").split())
    assert f"SPADE_PAGE_PROFILE=smoke .venv/bin/voila notebooks/{notebook.name}" in line
    assert all(flag in line for flag in _voila_flags()) and "--port=1" in line


@pytest.fixture
def server(tmp_path):
    """The explorer page, with a map bundle in its results folder."""
    results = tmp_path / "results"
    _write_bundle(results)
    with _voila(NOTEBOOK, results, tmp_path / "voila.log") as url:
        yield url


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser() or ("", "")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1400")
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def _status_with(chrome, *words: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        texts = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".spade-status")]
        return next((t for t in texts if all(w in t for w in words)), False)

    return WebDriverWait(chrome, PAGE_TIMEOUT, poll_frequency=0.25).until(
        ready, message=f"no status line with {words}"
    )


def test_moving_the_sparsity_slider_changes_the_picture(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.set_page_load_timeout(PAGE_TIMEOUT)
    browser.get(server)
    first = _status_with(browser, "ready", "sparsity 0.90")
    picture = browser.find_element(By.CSS_SELECTOR, ".spade-comparison")
    before = picture.screenshot_as_png
    assert "explorer_app(" not in browser.page_source, "the page shows code; make explore must strip it"
    assert MISSING_BUNDLE not in browser.find_element(By.TAG_NAME, "body").text
    assert len(browser.find_elements(By.TAG_NAME, "img")) >= 2, "the map browser's image is missing"
    if os.environ.get("SPADE_EXPLORER_SCREENSHOT"):
        app = browser.find_element(By.CSS_SELECTOR, ".spade-explorer")
        browser.execute_script("arguments[0].scrollIntoView();", app)
        Path(os.environ["SPADE_EXPLORER_SCREENSHOT"]).write_bytes(app.screenshot_as_png)

    handle = browser.find_element(By.CSS_SELECTOR, ".spade-explorer .noUi-handle")
    handle.click()
    handle.send_keys(Keys.ARROW_LEFT)  # one step down the slider's options: 0.9 -> 0.8
    second = _status_with(browser, "ready", "sparsity 0.80")
    time.sleep(0.5)  # let the browser paint the new image
    after = browser.find_element(By.CSS_SELECTOR, ".spade-comparison").screenshot_as_png
    assert first != second
    digest = [hashlib.sha256(png).hexdigest()[:12] for png in (before, after)]
    assert digest[0] != digest[1], f"the comparison image did not change with the sparsity ({digest[0]})"


def test_the_study_form_saves_each_click(tmp_path, browser):
    """`make study`'s page: trials written here, two clicks in the browser, two rows in the responses CSV."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from spade_utils import human_study as hs

    g = torch.Generator().manual_seed(0)
    photos = {f"p{i}": torch.rand(3, 24, 24, generator=g) for i in range(2)}
    trials = hs.make_trials(
        photos,
        {n: torch.rand(24, 24, generator=g) for n in photos},
        {(n, c): torch.rand(3, 16, 16, generator=g) for n in photos for c in hs.CONDITIONS},
        {n: 1 for n in photos},
    )
    results = tmp_path / "results"
    hs.save_trials(results / "study" / "trials", trials)
    responses = results / "study" / "responses.csv"
    with _voila(STUDY_NOTEBOOK, results, tmp_path / "voila.log") as url:
        browser.set_page_load_timeout(PAGE_TIMEOUT)
        browser.get(url)
        wait = WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.25)
        wait.until(lambda d: "question 1 of 4" in d.find_element(By.TAG_NAME, "body").text)
        assert "study_form(" not in browser.page_source
        for k, answer in enumerate(("left", "undecided"), start=2):
            browser.find_element(By.CSS_SELECTOR, f".spade-answer-{answer}").click()
            wait.until(lambda d, k=k: f"question {k} of 4" in d.find_element(By.TAG_NAME, "body").text)
    table = hs.read_responses(responses)
    assert list(table.answer) == ["left", "undecided"] and table.participant.nunique() == 1
    assert set(table.trial_id) <= {t.trial_id for t in trials}
