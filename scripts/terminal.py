"""Regenerate docs/images/terminal.svg: a real `tidings tail` session, recorded.

    .venv/bin/python scripts/terminal.py

Starts `tidings serve` on a free port, runs `tidings tail` on a chat topic and on every
task, publishes a few chat messages and runs a task through `Publisher.track()` (the
worker API), then renders what `tail` printed in a terminal frame with rich.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.text import Text

from tidings.client import Publisher

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--store", "memory"]
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tail = None
    try:
        for _ in range(100):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        tail_cmd = [sys.executable, "-u", "-m", "tidings", "tail", "chat/general", "tasks/**"]
        tail = subprocess.Popen(
            [*tail_cmd, "--url", url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        while httpx.get(url + "/stats").json()["connections"]["total"] == 0:
            time.sleep(0.05)
        with Publisher(url) as pub:
            pub.publish("chat/general", {"user": "ada", "text": "build 42 is out"}, type="chat")
            files = ["cat.png", "dog.png", "owl.png"]
            pub.create_task(task_id="convert-42", title="Convert images", total=len(files))
            with pub.track("convert-42", min_interval=0) as task:
                for name in files:
                    task.file(name, status="processing", filename=name)
                    time.sleep(0.05)
                    task.file(name, status="completed", filename=name, progress=100)
                    task.update(1, message=f"converted {name}")
            pub.publish("chat/general", {"user": "bob", "text": "nice, thanks"}, type="chat")
        time.sleep(0.5)
    finally:
        if tail is not None:
            tail.terminate()
            out, _ = tail.communicate(timeout=10)
        server.terminate()
        server.wait(10)
    console = Console(record=True, width=118, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(Text(f"$ tidings tail chat/general 'tasks/**' --url {url}", style="bold"))
    for line in out.splitlines():
        ident, kind, data = [*line.split("  ", 2), "", ""][:3]
        text = Text()
        text.append(f"{ident:<14}", style="dim")
        text.append(f"{kind:<16}", style="cyan")
        text.append(data if len(data) < 88 else data[:85] + "...")
        console.print(text)
    IMAGES.mkdir(exist_ok=True)
    console.save_svg(str(IMAGES / "terminal.svg"), title="tidings tail")


if __name__ == "__main__":
    main()
