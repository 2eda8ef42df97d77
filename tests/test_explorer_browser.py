"""The explorer in a real browser: notebook 09 served by Voila on 127.0.0.1, driven by
Playwright in Debian's headless Chromium (never ``playwright install``).

Every request that leaves 127.0.0.1 is aborted, so a passing test shows the explorer
works offline: the widget JavaScript comes from the installed packages. ``make test``
installs chromium (apt) and the Python packages; the test is skipped, loudly, only when
one of them is truly missing, and never under ``CI=true``, where it fails instead.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTEBOOK = ROOT / "notebooks" / "09_sample_explorer.ipynb"
ARTIFACTS = ROOT / "build" / "browser"


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return "chromium not found (apt-get install chromium; make test does this)"
    for module in ("playwright", "voila"):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module} missing (pip install -r requirements-dev.txt)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def voila_url(trained_run, tmp_path_factory):
    reason = _missing()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser test, but {reason}")
    if reason:
        print(f"\n*** BROWSER TEST SKIPPED: {reason} ***", file=sys.stderr)
        pytest.skip(f"BROWSER TEST SKIPPED: {reason}")
    port = _free_port()
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    env = {**os.environ, "DDPM_EXPLORER_RUNS": str(trained_run), "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}",
                                   "--Voila.ip=127.0.0.1", "--VoilaConfiguration.file_allowlist=['.*']"],
                                  cwd=NOTEBOOK.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:  # any HTTP answer means the server is up (GET / itself would start a kernel)
            urllib.request.urlopen(url + "api", timeout=2)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"voila did not start in 60 s: {log.read_text()[-2000:]}")
    if server.poll() is not None:
        pytest.fail(f"voila exited: {log.read_text()[-2000:]}")
    yield url
    server.terminate()
    server.wait(timeout=20)


GRID_BYTES = """async () => {
    const img = document.querySelector('img.ddpm-grid');
    if (!img || !img.src) return null;
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let h = 0;
    for (const b of bytes) h = (h * 31 + b) >>> 0;
    return img.src + ' ' + bytes.length + ' ' + h;
}"""


def test_explorer_in_headless_chromium_offline(voila_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    blocked, failed = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})

        def route(r):
            host = urlparse(r.request.url).hostname
            if host in ("127.0.0.1", "localhost") or r.request.url.startswith(("data:", "blob:")):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(voila_url, timeout=120_000)
        # the notebook generates a first grid of "seven"s while the page renders
        # the final message ("16 x seven (DDIM ...") only; "generating 16 x seven ..." comes first
        page.wait_for_selector(".ddpm-message:has-text('x seven (')", timeout=180_000)
        page.wait_for_function("document.querySelector('img.ddpm-grid') && document.querySelector('img.ddpm-grid').src",
                               timeout=30_000)
        before = page.evaluate(GRID_BYTES)
        page.screenshot(path=str(ARTIFACTS / "explorer_before.png"), full_page=True)

        page.locator(".ddpm-class select").select_option(label="three")
        page.locator("button.ddpm-generate").click()
        page.wait_for_selector(".ddpm-message:has-text('x three (')", timeout=180_000)
        deadline = time.time() + 60  # the image message follows the text message
        after = page.evaluate(GRID_BYTES)
        while after == before and time.time() < deadline:
            time.sleep(0.2)
            after = page.evaluate(GRID_BYTES)
        page.screenshot(path=str(ARTIFACTS / "explorer_after.png"), full_page=True)
        browser.close()
    assert before and after and after.split()[1:] != before.split()[1:], (before, after)
    assert (ARTIFACTS / "explorer_after.png").stat().st_size > 10_000
    # nothing outside 127.0.0.1 was needed: any blocked requests were optional extras (fonts, icons)
    assert all(urlparse(u).hostname not in ("127.0.0.1", "localhost") for u in blocked)
    print(f"blocked {len(blocked)} off-host request(s): {sorted(set(blocked))[:5]}")
