"""Regenerate docs/images/dashboard.png: the live dashboard, in a real browser.

    .venv/bin/python -m scripts.dashboard

Starts `tidings serve` on a free port, runs `tidings demo` against it, opens the dashboard
in the system's headless Chromium (through playwright; no browser is downloaded) and,
once the image batch is well under way and the other tasks have ended, saves a desktop
screenshot.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright
from scripts.chromium import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent

LIVE = "() => document.querySelector('#status').dataset.state === 'open'"

# The dashboard is "interesting" during the second batch of images: the chart has some
# history, the list holds the first round's completed, failed and cancelled tasks, and the
# selected batch is past 40% with files done, one in progress and more pending.
READY = """() => {
  const titles = [...document.querySelectorAll('.task')].map((row) => row.textContent);
  const batches = titles.filter((text) => text.includes('Convert 12 images')).length;
  const done = document.querySelectorAll('#files .file[data-status="completed"]').length;
  const busy = document.querySelectorAll('#files .file[data-status="processing"]').length;
  return batches >= 2
    && titles.some((text) => text.includes('failed'))
    && titles.some((text) => text.includes('cancelled'))
    && document.querySelector('#detail-status').textContent === 'running'
    && done >= 5 && busy === 1;
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("tidings serve exited early")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("tidings serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--color-scheme", choices=["light", "dark"], default="light")
    parser.add_argument("--full-page", action="store_true", help="the whole page, not the window")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tidings = [sys.executable, "-m", "tidings"]
    server = subprocess.Popen(
        [*tidings, "serve", "--port", str(port), "--store", "memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    demo = None
    try:
        wait_up(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
            page = browser.new_page(
                viewport={"width": args.width, "height": args.height},
                color_scheme=args.color_scheme,
            )
            page.goto(url + "/")
            page.wait_for_function(LIVE)
            demo = subprocess.Popen(
                [*tidings, "demo", "--url", url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            page.wait_for_function(READY, timeout=90_000, polling=100)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output), full_page=args.full_page)
            browser.close()
        print(f"wrote {args.output}")
    finally:
        for proc in (demo, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)


if __name__ == "__main__":
    main()
