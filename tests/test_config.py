"""Settings and safe defaults (issue #4, point 8; SPEC §8).

``tidings serve`` runs as a real process: a bad value must stop it with one line that names
the setting and exit code 2, never a traceback, and a secret must never be printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from tests._security import SECRET, bearer, running_server, token
from tests.conftest import free_port
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
    ],
)
def test_a_bad_value_stops_start_up_with_one_line_naming_the_setting(
    args: tuple[str, ...], flag: str
) -> None:
    line = assert_one_line(serve(*args), flag)
    assert f"TIDINGS_{flag[2:].replace('-', '_').upper()}" in line


def test_a_bad_environment_value_names_the_variable() -> None:
    line = assert_one_line(serve(env={"TIDINGS_QUEUE_SIZE": "lots"}), "TIDINGS_QUEUE_SIZE")
    assert "'lots'" in line


def test_an_unknown_flag_is_one_line() -> None:
    assert_one_line(serve("--no-such-flag"), "--no-such-flag")


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
        line = assert_one_line(serve("--jwt-public-key", str(path)), "--jwt-public-key", needle)
        assert "PRIVATE" not in line
        assert_one_line(serve(env={"TIDINGS_JWT_PUBLIC_KEY": text}), "--jwt-public-key")


# -- safe defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_a_non_loopback_bind_without_auth_is_refused(host: str) -> None:
    assert_one_line(serve("--host", host), "refusing", "--insecure", "--jwt-secret")


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
    other = serve("--queue-size", "0", env={"TIDINGS_JWT_SECRET": SECRET})
    assert SECRET not in other.stderr + other.stdout
    # An error about the secret itself does not echo it.
    short = "s3cr3t-but-short"
    refused = serve("--jwt-secret", short)
    assert short not in refused.stderr + refused.stdout
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
