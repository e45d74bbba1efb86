"""Headless Chromium for report tests: installed from Debian's packages when missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=10000",
]


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        # the test set-up installs it when missing (CI machines start without it)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True)
        exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed and `apt-get install chromium` failed")
    return exe


def render(page: Path, screenshot: Path, size: str = "1400,3000") -> tuple[int, int]:
    """Open `page`, save a screenshot, return (images decoded, images total) as the page reported them."""
    exe = chromium()
    with tempfile.TemporaryDirectory() as ud:
        common = [exe, *FLAGS, f"--user-data-dir={ud}"]
        subprocess.run(
            [*common, f"--screenshot={screenshot}", f"--window-size={size}", page.resolve().as_uri()],
            check=True,
            capture_output=True,
            timeout=120,
        )
    with tempfile.TemporaryDirectory() as ud:
        dom = subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={ud}", "--dump-dom", page.resolve().as_uri()],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    if m is None:
        pytest.fail(f"{page}: the page never reported its images (no data-images-loaded on <body>)")
    return int(m.group(1)), int(m.group(2))
