"""Headless Debian Chromium for the browser tests (skips the module when it is not installed)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BASE_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--no-first-run")


def require_browser():
    """Skip the calling test module unless chromium, chromedriver and selenium are there; return
    ``selenium.webdriver``."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver): "
                    "apt-get install -y chromium chromium-driver", allow_module_level=True)
    return pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")


def headless_chromium(tmp_path: Path, flags: Sequence[str] = (), size: str = "1600,1000") -> Iterator:
    """A headless Chromium WebDriver with its own profile in ``tmp_path``; quit on exit (a generator
    for pytest fixtures)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*BASE_FLAGS, *flags, f"--window-size={size}", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
