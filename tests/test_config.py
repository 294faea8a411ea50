"""Settings and safe defaults (issue #4, point 8; SPEC §8).

``tidings serve`` runs as a real process: a bad value must stop it with one line that names
the setting and exit code 2, never a traceback, and a secret must never be printed. Values
refused before the server opens anything are checked through the same ``main()`` in this
process (:func:`refused`); refusals that come later, at the store or the socket, and the
process's own output and exit, in a process of their own (:func:`serve`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from tests.conftest import free_port, run_main, wait_for
from tests.web._security import SECRET, bearer, running_server, token
from tidings.cli import build_parser, serve_parser_flags
from tidings.config import Settings, is_loopback, load_settings
from tidings.errors import ConfigError


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tidings serve`` that is expected to stop at once (its settings are refused)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )


def refused(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """:func:`serve` in this process, for settings that ``tidings serve`` refuses before it
    opens a socket or a loop (in ``tidings.cli``)."""
    return run_main("serve", "--port", str(free_port()), *args, env=env)


def assert_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("tidings: ")
    for needle in needles:
        assert needle in line, line
    return line


# -- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--port", "eighty"), "--port"),
        (("--port", "70000"), "--port"),
        (("--backend", "ftp://x"), "--backend"),
        (("--store", "mysql://db"), "--store"),
        (("--store", "redis"), "--store"),  # the Redis store needs the Redis backend
        (("--keepalive", "0"), "--keepalive"),
        (("--history-size", "-1"), "--history-size"),
        (("--history-ttl", "soon"), "--history-ttl"),
        (("--queue-size", "0"), "--queue-size"),
        (("--queue-bytes", "10"), "--queue-bytes"),
        (("--max-connections-per-user", "-1"), "--max-connections-per-user"),
        (("--max-connections-per-ip", "many"), "--max-connections-per-ip"),
        (("--connect-rate-limit", "-5"), "--connect-rate-limit"),
        (("--publish-rate-limit", "fast"), "--publish-rate-limit"),
        (("--max-event-bytes", "0"), "--max-event-bytes"),
        (("--max-body-bytes", "12"), "--max-body-bytes"),
        (("--max-header-bytes", "100"), "--max-header-bytes"),
        (("--request-timeout", "0"), "--request-timeout"),
        (("--retry", "-1"), "--retry"),
        (("--shutdown-grace", "-1"), "--shutdown-grace"),
        (("--max-connection-age", "0"), "--max-connection-age"),
        (("--cors-origin", "app.example.com"), "--cors-origin"),
        (("--cors-origin", "https://app.example.com/"), "--cors-origin"),
        (("--log-level", "loud"), "--log-level"),
        (("--workers", "0"), "--workers"),
        (("--workers", "2"), "--workers"),
        (("--jwt-secret", "too-short"), "--jwt-secret"),
        (("--jwt-public-key", "/no/such/key.pem"), "--jwt-public-key"),
        (("--jwt-secret", SECRET, "--jwt-public-key", "/x.pem"), "--jwt-public-key"),
        # Durations and rates: never infinite, never beyond what a timer holds.
        (("--shutdown-grace", "inf"), "--shutdown-grace"),
        (("--shutdown-grace", "1e400"), "--shutdown-grace"),
        (("--shutdown-grace", "1e300"), "--shutdown-grace"),
        (("--keepalive", "nan"), "--keepalive"),
        (("--history-ttl", "inf"), "--history-ttl"),
        (("--request-timeout", "1e400"), "--request-timeout"),
        (("--max-connection-age", "inf"), "--max-connection-age"),
        (("--task-retention", "1e300"), "--task-retention"),
        (("--connect-rate-limit", "inf"), "--connect-rate-limit"),
        (("--publish-rate-limit", "nan"), "--publish-rate-limit"),
        (("--retry", "99999999999"), "--retry"),
        (("--history-size", "1" + "0" * 30), "--history-size"),
        (("--queue-size", "1" + "0" * 30), "--queue-size"),
        # URLs that can only fail later.
        (("--store", "sqlite:///"), "--store"),
        (("--store", "sqlite:///./data/"), "--store"),
        (("--backend", "redis://localhost:abc/0"), "--backend"),
        (("--backend", "redis://localhost:99999/0"), "--backend"),
        (("--backend", "redis://localhost/notadb"), "--backend"),
        (("--backend", "redis://localhost/0?db=x"), "--backend"),
        (("--backend", "redis:///0"), "--backend"),
        (("--host", "[not-ipv6]"), "--host"),
        (("--host", ""), "--host"),
        # Origins a browser never sends.
        (("--cors-origin", "https://*.example.com"), "--cors-origin"),
        (("--cors-origin", "https://a.example:abc"), "--cors-origin"),
        (("--cors-origin", "https://a.example:99999"), "--cors-origin"),
        (("--cors-origin", "https://user@a.example"), "--cors-origin"),
        (("--cors-origin", "ftp://a.example"), "--cors-origin"),
        (("--jwt-audience", ""), "--jwt-audience"),
        (("--jwt-issuer", " "), "--jwt-issuer"),
        # What the hub fetches: the application's auth endpoint, the provider's keys.
        (("--auth-proxy", "app.example/auth"), "--auth-proxy"),
        (("--auth-proxy", "ftp://app.example/auth"), "--auth-proxy"),
        (("--auth-proxy", "http://app.example:0/auth"), "--auth-proxy"),
        (("--auth-proxy", "http:///auth"), "--auth-proxy"),
        (("--auth-proxy", "http://app.example/auth#x"), "--auth-proxy"),
        (("--auth-proxy-publish",), "--auth-proxy-publish"),  # needs --auth-proxy
        (("--auth-proxy-ttl", "-1"), "--auth-proxy-ttl"),
        (("--auth-proxy-ttl", "inf"), "--auth-proxy-ttl"),
        (("--auth-proxy-timeout", "0"), "--auth-proxy-timeout"),
        (("--auth-proxy-timeout", "301"), "--auth-proxy-timeout"),
        (("--jwt-jwks-url", "idp.example/jwks"), "--jwt-jwks-url"),
        (("--jwt-jwks-url", "https://idp example/jwks"), "--jwt-jwks-url"),
        (("--jwt-jwks-ttl", "0"), "--jwt-jwks-ttl"),
        (("--jwt-jwks-ttl", "nan"), "--jwt-jwks-ttl"),
        (("--jwt-secret", SECRET, "--jwt-jwks-url", "https://idp/jwks"), "--jwt-jwks-url"),
        (("--jwt-public-key", "/x.pem", "--jwt-jwks-url", "https://idp/jwks"), "--jwt-jwks-url"),
        # Several workers need one task store they all see (and one backend).
        (("--workers", "2", "--backend", "redis://127.0.0.1:1/0", "--store", "memory"), "--store"),
        (
            ("--workers", "2", "--backend", "redis://127.0.0.1:1/0", "--store", "sqlite:///"),
            "--store",
        ),
    ],
)
def test_a_bad_value_stops_start_up_with_one_line_naming_the_setting(
    args: tuple[str, ...], flag: str
) -> None:
    line = assert_one_line(refused(*args), flag)
    assert f"TIDINGS_{flag[2:].replace('-', '_').upper()}" in line


def test_the_log_level_error_lists_every_level_and_trace_is_one() -> None:
    line = assert_one_line(refused("--log-level", "loud"), "--log-level")
    assert "critical, error, warning, info, debug, trace" in line
    assert load_settings(log_level="TRACE").log_level == "trace"


def test_a_refused_redis_url_does_not_show_its_password() -> None:
    line = assert_one_line(
        refused("--backend", "redis://:hunter2-secret@localhost/notadb"), "--backend", "'notadb'"
    )
    assert "hunter2-secret" not in line


@pytest.mark.parametrize(
    "args",
    [
        ("--auth-proxy", "http://app:hunter2-secret@app.example/auth"),
        ("--auth-proxy", "ftp://app.example/auth?key=hunter2-secret"),
        ("--jwt-jwks-url", "ftp://idp.example/jwks?key=hunter2-secret"),
    ],
)
def test_a_refused_service_url_is_not_shown(args: tuple[str, ...]) -> None:
    """A URL may hold a password or a key in its query: the line says what is wrong only."""
    line = assert_one_line(refused(*args), args[0])
    assert "hunter2-secret" not in line


def test_origins_are_written_as_browsers_send_them() -> None:
    """A default port is dropped and the host lower-cased: ``Origin`` never has either."""
    settings = load_settings(
        cors_origin=[
            "https://App.Example.com:443",
            "https://app.example.com",
            "http://localhost:80",
            "http://localhost:5173",
            "http://[0:0::1]:8080",
            "*",
        ]
    )
    assert settings.cors_origin == [
        "https://app.example.com",
        "http://localhost",
        "http://localhost:5173",
        "http://[::1]:8080",
        "*",
    ]


def test_a_bracketed_ipv6_host_is_the_address_inside() -> None:
    assert load_settings(host="[::1]").host == "::1"


def test_a_bad_environment_value_names_the_variable() -> None:
    line = assert_one_line(refused(env={"TIDINGS_QUEUE_SIZE": "lots"}), "TIDINGS_QUEUE_SIZE")
    assert "'lots'" in line


def test_an_unknown_flag_is_one_line() -> None:
    assert_one_line(refused("--no-such-flag"), "--no-such-flag")


def _pem(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def test_unusable_public_keys_are_refused_at_start_up(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    p384 = _pem(ec.generate_private_key(ec.SECP384R1()).public_key())
    garbage = "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"
    for text, needle in ((private_pem, "private key"), (p384, "P-256"), (garbage, "RSA")):
        path = tmp_path / "key.pem"
        path.write_text(text)
        line = assert_one_line(refused("--jwt-public-key", str(path)), "--jwt-public-key", needle)
        assert "PRIVATE" not in line
        assert_one_line(refused(env={"TIDINGS_JWT_PUBLIC_KEY": text}), "--jwt-public-key")


def test_a_public_key_file_that_is_not_pem_is_one_line(tmp_path: Path) -> None:
    """A DER key (binary, not UTF-8) is refused with a hint, not a UnicodeDecodeError."""
    der = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "key.der"
    path.write_bytes(der)
    assert_one_line(refused("--jwt-public-key", str(path)), "--jwt-public-key", "not a PEM file")


# -- what start-up opens -----------------------------------------------------------------------


def test_a_port_in_use_is_one_line_naming_host_and_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--store", "memory"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert_one_line(
        result, f"cannot listen on 127.0.0.1:{port}", "--host/--port", "address already in use"
    )


def test_a_host_that_does_not_resolve_is_one_line() -> None:
    assert_one_line(
        serve("--host", "nosuch.invalid", "--insecure"),
        "cannot listen on nosuch.invalid:",
        "--host/--port",
    )


def test_a_bracketed_ipv6_loopback_host_serves() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    argv = ["serve", "--host", "[::1]", "--port", str(port), "--store", "memory"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def up() -> bool:
            assert proc.poll() is None, "the hub exited"
            try:
                return httpx.get(f"http://[::1]:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 20, "the hub on [::1]")
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize("kind", ["directory", "not-a-database", "no-such-directory"])
def test_a_store_that_cannot_be_opened_is_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "tasks.db"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-a-database":
        path.write_text("these are not the tasks you are looking for\n" * 100)
    else:
        blocker = tmp_path / "file"
        blocker.write_text("")
        path = blocker / "tasks.db"  # its directory would be a file
    line = assert_one_line(serve("--store", f"sqlite:///{path}"), "--store", "cannot open")
    assert "Traceback" not in line


#: Makes every hub's start fail, as a broken store or backend would (a sitecustomize, so
#: that worker processes, started afresh, fail too).
BROKEN_START = """
import tidings.hub
from tidings.errors import BackendUnavailable


async def _start(self):
    try:
        raise OSError("the disk is on fire")
    except OSError as exc:
        raise BackendUnavailable("the task store failed") from exc


tidings.hub.Hub.start = _start
"""


def _broken_start_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BROKEN_START)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def test_a_failed_start_is_one_log_line_and_exit_code_1(tmp_path: Path) -> None:
    result = serve("--store", "memory", env=_broken_start_env(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert errors[0].endswith("the task store failed: the disk is on fire"), errors


def test_a_worker_that_fails_to_start_stops_the_hub_with_exit_code_1(tmp_path: Path) -> None:
    result = serve(
        "--workers", "2", "--backend", "redis://127.0.0.1:1/0",
        "--store", f"sqlite:///{tmp_path / 'tasks.db'}",
        env=_broken_start_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "the task store failed: the disk is on fire" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("tidings: "), last
    assert "workers failed to start" in last


# -- safe defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_a_non_loopback_bind_without_auth_is_refused(host: str) -> None:
    assert_one_line(refused("--host", host), "refusing", "--insecure", "--jwt-secret")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "args",
    [("--insecure",), ("--jwt-secret", SECRET)],
    ids=["insecure", "with-auth"],
)
def test_a_non_loopback_bind_starts_with_insecure_or_auth(args: tuple[str, ...]) -> None:
    with running_server("--host", "0.0.0.0", *args) as server:
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


# -- secrets -----------------------------------------------------------------------------------


def test_secret_is_masked_in_settings() -> None:
    settings = load_settings(jwt_secret=SECRET)
    assert isinstance(settings.jwt_secret, SecretStr)
    for text in (
        repr(settings),
        str(settings),
        str(settings.model_dump()),
        settings.model_dump_json(),
    ):
        assert SECRET not in text


def test_secret_is_never_printed_in_help_errors_or_logs() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TIDINGS_JWT_SECRET": SECRET},
        check=False,
    )
    assert help_text.returncode == 0
    assert SECRET not in help_text.stdout + help_text.stderr
    # An error about another setting, with the secret set.
    other = refused("--queue-size", "0", env={"TIDINGS_JWT_SECRET": SECRET})
    assert SECRET not in other.stderr + other.stdout
    # An error about the secret itself does not echo it.
    short = "s3cr3t-but-short"
    too_short = refused("--jwt-secret", short)
    assert too_short.returncode == 2
    assert short not in too_short.stderr + too_short.stdout
    # A running hub, with requests that carry tokens.
    with running_server("--jwt-secret", SECRET, "--log-level", "debug") as server:
        tok = token("ops", admin=True)
        assert httpx.get(server.url + "/stats", headers=bearer(tok), timeout=10).status_code == 200
        assert httpx.get(server.url + "/stats", timeout=10).status_code == 401
        log = server.log()
    assert SECRET not in log
    assert tok not in log


# -- flags and fields ------------------------------------------------------------------------


def _serve_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve: argparse.ArgumentParser = action.choices["serve"]
            return serve
    raise AssertionError("no serve command")


def test_every_setting_has_a_serve_flag_and_every_flag_a_setting() -> None:
    flags = {
        option
        for action in _serve_parser()._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }
    fields = {"--" + name.replace("_", "-") for name in Settings.model_fields}
    assert flags == fields
    assert serve_parser_flags() == {
        "--" + name.replace("_", "-"): name for name in Settings.model_fields
    }


def test_every_setting_has_help_naming_its_variable() -> None:
    for action in _serve_parser()._actions:
        if action.dest in Settings.model_fields:
            assert action.help is not None
            assert f"TIDINGS_{action.dest.upper()}" in action.help
            assert Settings.model_fields[action.dest].description


def test_every_setting_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable is either read as given or refused with its own name."""
    defaults = load_settings()
    for name in Settings.model_fields:
        variable = f"TIDINGS_{name.upper()}"
        monkeypatch.setenv(variable, "zz-not-a-default")
        try:
            value = getattr(load_settings(), name)
        except ConfigError as refused:
            message = refused.message
        else:
            message = ""
            assert value in ("zz-not-a-default", ["zz-not-a-default"]), name
        assert not message or variable in message
        monkeypatch.delenv(variable)
    assert load_settings() == defaults


def test_a_flag_beats_the_environment_which_beats_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().queue_size == 1000
    monkeypatch.setenv("TIDINGS_QUEUE_SIZE", "7")
    assert load_settings().queue_size == 7
    assert load_settings(queue_size=5).queue_size == 5


def test_repeatable_settings_split_on_commas_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDINGS_CORS_ORIGIN", "https://a.example, https://b.example:8443")
    monkeypatch.setenv("TIDINGS_FORWARDED_ALLOW_IPS", "10.0.0.1,10.0.0.2")
    settings = load_settings()
    assert settings.cors_origin == ["https://a.example", "https://b.example:8443"]
    assert settings.forwarded_allow_ips == ["10.0.0.1", "10.0.0.2"]


def test_the_task_store_follows_the_backend_unless_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SPEC §6/§8: SQLite by default; with the Redis backend, tasks live in Redis."""
    assert load_settings().store == "sqlite:///./tidings.db"
    assert load_settings(backend="redis://r:6379/0").store == "redis"
    assert load_settings(backend="redis://r:6379/0", store="memory").store == "memory"
    assert load_settings(store="sqlite:///t.db").store == "sqlite:///t.db"
    monkeypatch.setenv("TIDINGS_BACKEND", "rediss://r:6380/1")
    assert load_settings().store == "redis"
    assert load_settings(store="auto").store == "redis"
    with pytest.raises(ConfigError, match="--store"):
        load_settings(backend="memory", store="redis")


def test_secure_defaults() -> None:
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert not settings.allow_query_token
    assert not settings.insecure
    assert settings.cors_origin == []
    assert not settings.auth_enabled
    assert settings.max_connections_per_user > 0
    assert settings.max_connections_per_ip > 0
    assert settings.connect_rate_limit > 0
    assert settings.publish_rate_limit > 0
    assert settings.forwarded_allow_ips == ["127.0.0.1"]
