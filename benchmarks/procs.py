"""Processes of a benchmark run: servers under test, the load generator, the publisher.

Every server runs pinned to core 0 and every load process to core 1 (``taskset``), each
with a deadline; a server is stopped with SIGTERM, then SIGKILL if it is still there after
a few seconds, so one stuck server cannot hold the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
BUILD = BENCH / "results" / "tmp"
PYTHON = sys.executable
SERVER_CORE = "0"
LOAD_CORE = "1"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Seconds the load generator spends opening connections at most; a server that is slower
#: is measured with the connections it accepted by then (the report says how many).
OPEN_TIMEOUT = 30


class BenchError(Exception):
    """A step of the run failed; the run records it and goes on with the next one."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: As root, benchmark processes run at nice -15: other work on the machine (a test run in
#: another shell) then gets a small share of the two cores instead of half of one.
NICE = ["nice", "-n", os.environ.get("BENCH_NICE", "-15")] if os.geteuid() == 0 else []


def pinned(core: str, argv: list[str]) -> list[str]:
    return [*NICE, "taskset", "-c", core, *argv]


def _boost() -> None:
    """In the child, before exec: its own session, whose autogroup gets nice -15.

    Linux groups processes by session ("autogroup") and shares the CPU between groups
    first, so a plain ``nice`` only counts inside one session: other sessions' work on
    the machine would still take up to half of the server's core. As root, the group's
    own weight is raised too.
    """
    if os.geteuid() == 0:
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
            f.write(os.environ.get("BENCH_NICE", "-15"))


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a benchmark process in its own session (see :func:`_boost`)."""
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=_boost, **kwargs)


def build_loadgen() -> Path:
    """Compile ``loadgen.c`` with ``cc -O2`` into the (ignored) build directory."""
    BUILD.mkdir(parents=True, exist_ok=True)
    out = BUILD / "loadgen"
    src = BENCH / "loadgen.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise BenchError("no C compiler (cc) found: install gcc")
        subprocess.run([cc, "-O2", "-o", str(out), str(src)], check=True, timeout=120)
    return out


# -- /proc readings -------------------------------------------------------------------------


def proc_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` (and their waited-for children), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def proc_rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def core_times(core: str) -> tuple[int, int]:
    """(busy, total) jiffies of one core, from /proc/stat (softirq work included)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]
            return sum(values) - idle, sum(values)
    return 0, 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@dataclass
class Meter:
    """CPU of the server's processes and of its core between two points."""

    pids: list[int]
    cpu: float = 0.0
    busy: int = 0
    total: int = 0

    def start(self) -> None:
        self.cpu = proc_cpu_seconds(self.pids)
        self.busy, self.total = core_times(SERVER_CORE)

    def read(self) -> dict[str, float]:
        """Process CPU, and the core's busy time: it also holds the kernel's loopback work
        that the server's writes cause and that runs in softirq, not in the process."""
        cpu = proc_cpu_seconds(self.pids) - self.cpu
        busy, total = core_times(SERVER_CORE)
        share = (busy - self.busy) / (total - self.total) if total > self.total else 0.0
        return {
            "server_cpu_seconds": round(cpu, 3),
            "server_core_busy": round(share, 3),
            "server_core_busy_seconds": round((busy - self.busy) / CLK_TCK, 3),
        }


# -- servers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test and talk to it."""

    name: str
    label: str
    subscribe_path: str = "/events?topic=bench"
    publish_format: str = "json"
    module: str | None = None  # benchmarks/servers/<module>.py
    needs: tuple[str, ...] = ()

    def missing(self) -> str | None:
        """Why this server cannot run here, or ``None``."""
        for mod in self.needs:
            try:
                __import__(mod)
            except ImportError:
                return f"Python package {mod!r} is not installed (pip install -e '.[bench]')"
        if self.name == "nchan" and (shutil.which("nginx") is None or not NCHAN_MODULE.exists()):
            return "nginx with libnginx-mod-nchan is not installed"
        return None


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("tidings", "tidings"),
        ServerSpec(
            "tidings-embedded", "tidings embedded (FastAPI, uvicorn)", module="tidings_embedded"
        ),
        ServerSpec("tidings-granian", "tidings on granian (ASGI)", needs=("granian",)),
        ServerSpec("bare-uvloop", "bare uvloop (bound)", module="bare_uvloop"),
        ServerSpec(
            "sse-starlette", "sse-starlette", module="sse_starlette_app", needs=("sse_starlette",)
        ),
        ServerSpec("aiohttp-sse", "aiohttp-sse", module="aiohttp_sse_app", needs=("aiohttp_sse",)),
        ServerSpec("fastapi-sse", "FastAPI fastapi.sse", module="fastapi_sse_app"),
        ServerSpec(
            "nchan", "Nchan (nginx, C)", subscribe_path="/sub?id=bench", publish_format="nchan"
        ),
    )
}


def tidings_flags() -> list[str]:
    """The benchmark's ``tidings serve`` flags that this version of tidings has."""
    wanted = [
        ("--store", "memory"),
        ("--max-connections-per-ip", "0"),
        ("--max-connections-per-user", "0"),
        ("--connect-rate-limit", "0"),
        ("--publish-rate-limit", "0"),
        ("--queue-size", "1000"),
        ("--log-level", "warning"),
    ]
    help_text = subprocess.run(
        [PYTHON, "-m", "tidings", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    flags: list[str] = []
    for flag, value in wanted:
        if flag in help_text:
            flags += [flag, value]
    return flags


def tidings_env() -> dict[str, str]:
    """The environment of a hub that is not ``tidings serve``: its flags as ``TIDINGS_*``."""
    flags = tidings_flags()
    env = {**os.environ}
    env.update(
        {
            f"TIDINGS_{k[2:].replace('-', '_').upper()}": v
            for k, v in zip(flags[::2], flags[1::2], strict=True)
        }
    )
    return env


NGINX_CONF = """
load_module {module};
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19900; use epoll; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp;
  scgi_temp_path {dir}/tmp;
  nchan_shared_memory_size 256M;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /pub {{
      nchan_publisher;
      nchan_channel_id $arg_id;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 60s;
    }}
    location = /sub {{
      nchan_subscriber eventsource;
      nchan_channel_id $arg_id;
    }}
  }}
}}
"""


@dataclass
class Server:
    """A running server under test."""

    spec: ServerSpec
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    tmpdir: Path | None = None
    pids: list[int] = field(default_factory=list)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pids)

    def meter(self) -> Meter:
        return Meter(list(self.pids))

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise BenchError(f"server did not listen on port {port} within {timeout:.0f} s")


@contextlib.contextmanager
def run_server(
    spec: ServerSpec, *, extra: list[str] | None = None, port: int | None = None
) -> Iterator[Server]:
    """Start ``spec`` pinned to the server core, and stop it afterwards."""
    port = port or free_port()
    BUILD.mkdir(parents=True, exist_ok=True)
    log = BUILD / f"{spec.name}-{port}.log"
    tmpdir: Path | None = None
    env: dict[str, str] | None = None
    if spec.name == "tidings":
        argv = [PYTHON, "-m", "tidings", "serve", "--port", str(port), *tidings_flags()]
    elif spec.name == "tidings-granian":
        # The same hub and settings as `tidings serve`, as a plain ASGI app under granian
        # (one worker, uvloop): every stream goes through ASGI `send`.
        env = tidings_env()
        granian = str(Path(PYTHON).parent / "granian")
        argv = [granian, "--interface", "asgi", "--factory", "--loop", "uvloop"]
        argv += ["--workers", "1", "--runtime-mode", "st", "--no-ws", "--log-level", "warning"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--backlog", "4096"]
        argv += ["--backpressure", "20000", "tidings.hub:app_from_env"]
    elif spec.name == "nchan":
        tmpdir = Path(tempfile.mkdtemp(prefix="nchan-", dir=BUILD))
        (tmpdir / "tmp").mkdir()
        conf = tmpdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(module=NCHAN_MODULE, dir=tmpdir, port=port))
        argv = ["nginx", "-c", str(conf), "-p", str(tmpdir)]
    else:
        argv = [PYTHON, str(BENCH / "servers" / f"{spec.module}.py"), "--port", str(port)]
        if spec.name == "tidings-embedded":
            env = tidings_env()
    argv += extra or []
    with open(log, "wb") as out:
        proc = spawn(
            pinned(SERVER_CORE, argv), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
    server = Server(spec, port, proc, log, tmpdir, [proc.pid])
    try:
        wait_port(port, proc, 30.0)
        if spec.name in ("nchan", "tidings-granian"):
            server.pids = [proc.pid, *children(proc.pid)]
        yield server
    finally:
        # Nothing is measured any more: a short grace, then SIGKILL (nginx's master ends
        # its worker on SIGTERM at once).
        stop_process(proc, grace=2.0)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def warm_up(server: Server) -> None:
    """One subscribe and one publish, so lazy imports and caches are in place."""
    spec = server.spec
    with socket.create_connection(("127.0.0.1", server.port), 5) as sub:
        sub.sendall(
            b"GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
            % spec.subscribe_path.encode()
        )
        sub.recv(4096)
        if spec.publish_format == "nchan":
            path, body = "/pub?id=bench", b'{"t":0,"n":0}'
        else:
            path, body = "/publish", b'{"topic":"bench","data":{"t":0,"n":0}}'
        http_post(server.port, path, body)
        sub.settimeout(5)
        with contextlib.suppress(OSError):
            sub.recv(4096)


def http_post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST; the answer is read up to its Content-Length (or the close)."""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path.encode(), len(body), body)
        )
        s.settimeout(10)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
                head, sep, rest = data.partition(b"\r\n\r\n")
                if sep and _complete(head, rest):
                    break
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head[9:12]) if len(head) >= 12 else 0
    return status, rest


def _complete(head: bytes, body: bytes) -> bool:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


# -- load generator and publisher -------------------------------------------------------------


class LineReader:
    """Reads lines from a child's stdout with a deadline (no thread)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buf = b""

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        fd = self.stream.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                if self.buf:
                    break
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")


class LoadGen:
    """The C load generator, driven over its stdin/stdout protocol (see loadgen.c)."""

    def __init__(
        self,
        binary: Path,
        port: int,
        n: int,
        *,
        path: str,
        max_run: float,
        extra: list[str] | None = None,
        stats_file: Path | None = None,
    ) -> None:
        argv = [str(binary), "--port", str(port), "-n", str(n), "--path", path]
        argv += ["--max-run", str(int(max_run)), "--open-timeout", str(OPEN_TIMEOUT)]
        if stats_file is not None:
            argv += ["--stats-file", str(stats_file)]
        argv += extra or []
        self.err = open(BUILD / f"loadgen-{port}.err", "wb")  # noqa: SIM115
        self.proc = spawn(
            pinned(LOAD_CORE, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
        )
        assert self.proc.stdout is not None
        self.out = LineReader(self.proc.stdout)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        line = self.out.readline(timeout)
        if line is None or not line.startswith("READY "):
            raise BenchError(f"load generator not ready within {timeout:.0f} s: {line!r}")
        ready: dict[str, Any] = json.loads(line[6:])
        return ready

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, drain_ms: int, expected: int, timeout: float) -> dict[str, Any]:
        self.send(f"stop {drain_ms} {expected}")
        line = self.out.readline(timeout + drain_ms / 1000)
        if line is None:
            raise BenchError("load generator did not report")
        report: dict[str, Any] = json.loads(line)
        return report

    def close(self) -> None:
        stop_process(self.proc, grace=2.0)
        self.err.close()


class Publisher:
    """``publisher.py`` pinned to the load core; prints a start line, then its report."""

    def __init__(self, mode: str, args: list[str]) -> None:
        argv = [PYTHON, str(BENCH / "publisher.py"), mode, *args]
        self.proc = spawn(pinned(LOAD_CORE, argv), stdout=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stdout is not None
        self.out = LineReader(self.proc.stdout)

    def wait_started(self, timeout: float = 20.0) -> None:
        line = self.out.readline(timeout)
        if line is None or "started" not in line:
            raise BenchError(f"publisher did not start: {line!r}")

    def report(self, timeout: float) -> dict[str, Any]:
        line = self.out.readline(timeout)
        if line is None:
            raise BenchError("publisher did not report in time")
        report: dict[str, Any] = json.loads(line)
        return report

    def close(self) -> None:
        """Stop it: the measurement is over (it may still be awaiting answers)."""
        try:
            self.proc.wait(1)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, grace=2.0)
