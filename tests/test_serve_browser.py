"""`foldblend serve` end to end: train a tiny project, start the server through the CLI, and use the page in a
real headless Chromium (Playwright) as a person would: drop two images and a text file on it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from foldblend.cli import main

pytestmark = pytest.mark.slow

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
# the background-networking flags keep Chromium from calling home, which a closed network refuses
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
STARTUP_LIMIT = 180  # seconds; the server prints how long it took, and a busy 2-core machine is slow


def _run(root, *args):
    assert main(["--root", str(root), *args]) == 0, f"foldblend {' '.join(args)} failed"


def _files(root: Path) -> dict:
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{server.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return time.monotonic() - start
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"the server did not answer within {limit} s")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary for the browser test (apt-get install chromium)")
def test_the_page_shows_predicts_labels_and_refuses_a_text_file(tiny_project, tmp_path_factory):
    pytest.importorskip("gradio", reason="the serve extra (gradio) is not installed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
    root = tiny_project
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"], ["blend", "--bias"]):
        _run(root, *stage)

    outside = tmp_path_factory.mktemp("outside")
    images = [root / "input" / "testset" / "t001.png", root / "input" / "testset" / "t002.png"]
    text = outside / "notes.txt"
    text.write_text("not an image\n")
    csv = outside / "predicted.csv"
    _run(root, "predict", "--images", *map(str, images), "--exp", "blend", "--out", str(csv))
    predicted = pd.read_csv(csv, dtype=str).assign(file=lambda d: d["id"].map(lambda i: Path(i).name))
    expected = dict(zip(predicted["file"], predicted["predicted"]))
    expected_prob = dict(zip(predicted["file"], predicted["prob_1"].astype(float)))

    before = _files(root)
    port = _free_port()
    uploads = outside / "gradio_uploads"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "foldblend.cli", "serve", "--port", str(port)], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        startup = _wait_until_up(url, server, STARTUP_LIMIT)
        print(f"foldblend serve answered after {startup:.1f} s")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.set_input_files("#fb-files input[type=file]", [*map(str, images), str(text)])
            page.wait_for_selector(".fb-card", timeout=120_000)
            page.wait_for_selector(".fb-error", timeout=30_000)
            cards = {c.get_attribute("data-file"): c for c in page.query_selector_all(".fb-card")}
            shown = {name: card.get_attribute("data-predicted") for name, card in cards.items()}
            shown_prob = {name: float(card.query_selector(".fb-p").inner_text()) for name, card in cards.items()}
            errors = [e.inner_text() for e in page.query_selector_all(".fb-error")]
            page.screenshot(path=str(outside / "serve.png"), full_page=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    assert shown == expected, "the page's labels differ from `foldblend predict` for the same files"
    assert shown_prob == {f: pytest.approx(round(p, 3), abs=1e-9) for f, p in expected_prob.items()}
    assert len(errors) == 1 and errors[0].startswith("notes.txt: not an image file")
    assert _files(root) == before, "the server wrote into the project"
    assert server.returncode == 0
