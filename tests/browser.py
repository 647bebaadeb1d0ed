"""Drive the ``rsitr-app`` page in a real browser: Debian's headless ``chromium`` through selenium and
``chromium-driver``, both found on ``PATH`` (nothing here downloads a browser or a driver). Used by the
browser test, the app benchmark and the README's screenshot."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BrowserUnavailable(RuntimeError):
    """chromium, chromium-driver or selenium is missing; the message says which and how to install it."""


def headless_chromium(width: int = 1280, height: int = 900):
    """A selenium ``WebDriver`` for headless chromium with a ``width`` x ``height`` window."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise BrowserUnavailable(
            "Debian's chromium and chromium-driver are absent (apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install selenium)") from None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_for(driver, find: Callable[[Any], Any], timeout: float = 60.0, poll: float = 0.02) -> Any:
    """The first truthy ``find(driver)``, polled every ``poll`` seconds (selenium's default, 0.5 s, would
    round every timing up to it) until ``timeout`` seconds."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=poll).until(lambda d: find(d) or None)


@dataclass
class BrowserAnswer:
    """What the page showed for a query: the gallery captions, best first, the summary line, and the
    seconds from pressing the key (or button) to both being on screen."""

    captions: list[str]
    summary: str
    seconds: float


def open_page(driver, url: str) -> None:
    """Load the app at ``url`` and wait until its query box is there."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#query textarea"))


def ask_text(driver, query: str) -> BrowserAnswer:
    """Type ``query`` in the text box (replacing what is there), press Enter, and wait for the answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, "#query textarea")
    box.clear()
    box.send_keys(query)
    started = time.perf_counter()
    box.send_keys(Keys.ENTER)
    return answer_shown(driver, "text", f"“{query}”", started)


def ask_image(driver, image: str | Path) -> BrowserAnswer:
    """Open the image tab, upload ``image``, press "Find similar", and wait for the answer."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Image')]").click()
    upload = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#image_query input[type=file]"))
    upload[0].send_keys(str(Path(image).resolve()))
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#image_query img"))  # uploaded, shown
    started = time.perf_counter()
    driver.find_element(By.ID, "search_image").click()
    return answer_shown(driver, "image", "the image", started)


def answer_shown(driver, tab: str, query: str, started: float) -> BrowserAnswer:
    from selenium.webdriver.common.by import By

    def shown(d):
        summary = d.find_element(By.ID, f"{tab}_summary").text
        captions = [c.text for c in d.find_elements(By.CSS_SELECTOR, f"#{tab}_results .caption-label")]
        return (summary, captions) if f"for {query} (" in summary and captions else None

    summary, captions = wait_for(driver, shown)
    return BrowserAnswer(captions, summary, time.perf_counter() - started)
