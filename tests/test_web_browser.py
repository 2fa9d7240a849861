"""``depth2img serve`` in a real browser: Debian's Chromium driven by Playwright (``executable_path``; Playwright's
own browser download is not used). Upload the example photo, type a prompt, Generate, wait for the gallery,
check the depth preview drew, download the PNG and read its parameters, and keep a screenshot.

``DEPTH2IMG_SCREENSHOT=docs/images/web-ui.png`` also writes the screenshot there (how the README's was made).
Under CI=true a missing Chromium or Playwright fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import IN_CI, require
from web_helpers import ROOM, load_tiny_engine, running

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    message = "Chromium is not installed (Debian: apt-get install -y chromium)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def test_generate_in_chromium(tmp_path):
    require("gradio")
    sync_api = require("playwright.sync_api")
    executable = chromium_path()
    engine = load_tiny_engine(tmp_path / "tiny-model")
    with running(engine) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.goto(server.url)
            for control, value in (("#size", "128"), ("#steps", "8")):  # small and short: CPU-friendly
                page.locator(f"{control} input[type=number]").fill(value)
                page.locator(f"{control} input[type=number]").press("Enter")
            page.locator("#input-image input[type=file]").set_input_files(str(ROOM))
            depth = page.locator("#depth-preview img")
            depth.wait_for(state="visible", timeout=60_000)
            page.wait_for_function("() => document.querySelector('#depth-preview img')?.naturalWidth > 0")
            assert depth.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 96]
            page.locator("#prompt textarea").fill("a cosy log cabin interior in winter, warm lamp light")
            page.locator("#generate").click()
            thumbnail = page.locator("#gallery img").first
            thumbnail.wait_for(state="visible", timeout=120_000)
            page.wait_for_function("() => document.querySelector('#status')?.innerText.includes('Done')")
            png = _download(page, tmp_path)
            with Image.open(png) as image:
                assert image.format == "PNG" and image.size == (128, 96)
                record = json.loads(image.text["depth2img"])
                parameters = image.text["parameters"]
            assert record["prompt"] == "a cosy log cabin interior in winter, warm lamp light"
            assert record["steps"] == 8 and record["image"] == ROOM.name
            assert parameters.startswith("a cosy log cabin interior") and "Steps: 8" in parameters
            shot = tmp_path / "web-ui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
            if os.environ.get("DEPTH2IMG_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["DEPTH2IMG_SCREENSHOT"])
        finally:
            browser.close()


def _download(page, folder: Path) -> Path:
    """Open the first result and press the gallery's download button; the saved file is what the browser got."""
    page.locator("#gallery img").first.click()
    button = page.locator("#gallery button[aria-label='Download'], #gallery a[download]").first
    button.wait_for(state="visible", timeout=30_000)
    with page.expect_download() as download_info:
        button.click()
    target = folder / "downloaded.png"
    download_info.value.save_as(str(target))
    page.keyboard.press("Escape")
    return target
