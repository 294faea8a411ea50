"""Settings: one model holds every setting's default, type, variable, validation and help.

Each field is a ``tidings serve`` flag (``--queue-size``) and a ``TIDINGS_<NAME>`` variable
(``TIDINGS_QUEUE_SIZE``); a flag beats the environment, which beats the default. Building
:class:`Settings` only validates: nothing connects or opens files here.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tidings.errors import ConfigError

__all__ = ["Settings", "check_hub_url", "is_loopback", "load_settings"]

#: The task store ``--store auto`` means without a Redis backend.
DEFAULT_SQLITE_STORE = "sqlite:///./tidings.db"
#: The longest duration setting, in seconds (ten years): timers stay representable.
MAX_SECONDS = 10 * 365 * 86400
#: The largest count or size setting: any counter and any Redis or C size holds it.
MAX_COUNT = 2**31 - 1
#: What --log-level accepts, quietest first.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# SPEC §2's pattern grammar (tidings.topics.validate_pattern is the rule; config sits beside
# topics in the layers, so it checks the same grammar itself).
_PATTERN = re.compile(r"(?:(?:[A-Za-z0-9_.:@-]+|\*)/)*(?:[A-Za-z0-9_.:@-]+|\*|\*\*)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Settings(BaseSettings):
    """Every setting of a tidings hub (SPEC §8). Durations are seconds unless named."""

    model_config = SettingsConfigDict(
        env_prefix="TIDINGS_",
        extra="forbid",
        validate_default=True,
        frozen=True,
        # inf and nan are never a duration or a rate.
        allow_inf_nan=False,
    )

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    backend: str = Field(
        "memory", description="Event backend: 'memory' (one process) or 'redis://host:port/db'."
    )
    store: str = Field(
        "auto",
        description="Task store: 'sqlite:///path', 'memory' or 'redis' (the backend's Redis); "
        "'auto' is 'redis' with a Redis backend, else 'sqlite:///./tidings.db'.",
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret for JWTs (32 bytes or more); turns authentication on."
    )
    jwt_public_key: str | None = Field(
        None,
        description="RS256/ES256 public key (PEM text or a path to a PEM file); turns "
        "authentication on.",
    )
    jwt_audience: str | None = Field(
        None, description="Required 'aud' claim of tokens (set it when the key is shared)."
    )
    jwt_issuer: str | None = Field(None, description="Required 'iss' claim of tokens.")
    jwt_jwks_url: str | None = Field(
        None,
        description="URL of a JWKS whose RS256/ES256 keys verify tokens, fetched at start-up "
        "and refreshed; turns authentication on.",
    )
    jwt_jwks_ttl: float = Field(
        300.0,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds JWKS keys are used before they are fetched again (an unknown kid: "
        "sooner, at most every 30 s); if fetches fail, the last good keys serve as long again.",
    )
    auth_proxy: str | None = Field(
        None,
        description="URL of the application's endpoint asked who opens a stream (the request's "
        "cookies and Authorization header are passed on); turns authentication on.",
    )
    auth_proxy_publish: bool = Field(
        False, description="Ask the auth proxy about publishes and task changes too (else: JWT)."
    )
    auth_proxy_ttl: float = Field(
        10.0, ge=0, le=MAX_SECONDS, description="Seconds an auth proxy answer is reused (0: never)."
    )
    auth_proxy_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds to wait for the auth proxy (then 503)."
    )
    allow_query_token: bool = Field(
        False, description="Accept the token in the 'token' query parameter (for EventSource)."
    )
    cors_origin: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Allowed CORS origin (repeatable; comma-separated in the environment).",
    )
    keepalive: float = Field(
        15.0, gt=0, le=MAX_SECONDS, description="Seconds of silence before a ': ping'."
    )
    history_size: int = Field(
        1000, ge=0, le=MAX_COUNT, description="Events kept per topic for resume."
    )
    history_ttl: float = Field(
        3600.0, gt=0, le=MAX_SECONDS, description="Seconds an event stays in history."
    )
    queue_size: int = Field(
        1000, ge=1, le=MAX_COUNT, description="Events queued per connection at most."
    )
    queue_bytes: int = Field(
        1024 * 1024, ge=1024, le=MAX_COUNT, description="Bytes queued per connection at most."
    )
    max_connections_per_user: int = Field(
        100, ge=0, le=MAX_COUNT, description="Open streams per user (0: no limit)."
    )
    max_connections_per_ip: int = Field(
        1000, ge=0, le=MAX_COUNT, description="Open streams per client IP (0: no limit)."
    )
    connect_rate_limit: float = Field(
        50.0, ge=0, description="Stream attempts per IP per second (0: no limit)."
    )
    publish_rate_limit: float = Field(
        1000.0, ge=0, description="Publishes per principal per second (0: no limit)."
    )
    max_event_bytes: int = Field(
        65536, ge=1, le=MAX_COUNT, description="Largest event data, in bytes of JSON."
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, le=MAX_COUNT, description="Largest request body, in bytes."
    )
    max_header_bytes: int = Field(
        32768,
        ge=4096,
        le=1024 * 1024,
        description="Largest request line plus headers, in bytes (414/431 beyond).",
    )
    request_timeout: float = Field(
        10.0,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds a client has to send a whole request (line, headers, body); "
        "slower ones are cut.",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="Proxy addresses trusted to set X-Forwarded-For/-Proto (repeatable; "
        "'*' trusts all): the client IP of per-IP limits comes from them.",
    )
    retry: int = Field(
        3000, ge=0, le=86_400_000, description="Reconnect delay sent to clients, in ms."
    )
    shutdown_grace: float = Field(
        10.0, ge=0, le=MAX_SECONDS, description="Seconds to flush and end streams on shutdown."
    )
    drain_window: float = Field(
        5.0,
        ge=0,
        le=MAX_SECONDS,
        description="Seconds over which shutdown ends open streams, in batches with jitter, "
        "so clients reconnect elsewhere gradually (at most --shutdown-grace less 1 s; "
        "0 ends them all at once).",
    )
    max_connection_age: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="End streams older than this many seconds (with jitter); off by default.",
    )
    presence_events: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Topic pattern whose streams joining and leaving are published on the "
        "topic as presence_join and presence_leave events (repeatable; comma-separated in "
        "the environment).",
    )
    task_retention: float = Field(
        86400.0,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds a finished task is kept before it is purged.",
    )
    insecure: bool = Field(
        False, description="Allow binding a non-loopback address with authentication off."
    )
    log_level: str = Field(
        "info", description="Log level: critical, error, warning, info, debug or trace."
    )
    workers: int = Field(1, ge=1, le=64, description="Server processes (needs --backend redis).")

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        host = value.strip()
        if host.startswith("[") or host.endswith("]"):
            # The URL form of an IPv6 address: the address is what is inside.
            inner = host.removeprefix("[").removesuffix("]")
            try:
                ipaddress.IPv6Address(inner)
            except ValueError:
                raise ValueError("brackets hold an IPv6 address, like [::1]") from None
            return inner
        if not host or any(char.isspace() for char in host):
            raise ValueError("expected an address or a host name (0.0.0.0: every interface)")
        return host

    @field_validator("cors_origin", "forwarded_allow_ips", "presence_events", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origin")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        origins = []
        for origin in value:
            if origin == "*":
                origins.append(origin)
                continue
            try:
                origins.append(_normal_origin(origin))
            except ValueError as exc:
                raise ValueError(
                    f"{origin!r} can never match what a browser sends: {exc} (an origin is a "
                    "scheme and a host with an optional port, like https://app.example.com)"
                ) from None
        return list(dict.fromkeys(origins))

    @field_validator("presence_events")
    @classmethod
    def _check_presence_events(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if len(pattern) > 256 or _PATTERN.fullmatch(pattern) is None:
                raise ValueError(
                    f"{pattern!r} is not a topic pattern (segments of A-Z a-z 0-9 _ . : @ -, "
                    "or *, and a final **; e.g. chat/*)"
                )
        return list(dict.fromkeys(value))

    @field_validator("jwt_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # RFC 7518 §3.2: an HS256 key must be at least as long as the hash (32 bytes).
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("at least 32 bytes are needed for HS256")
        return value

    @field_validator("jwt_public_key")
    @classmethod
    def _check_one_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("jwt_secret") is not None:
            raise ValueError("set either --jwt-secret or --jwt-public-key, not both")
        return value

    @field_validator("jwt_jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (info.data.get("jwt_secret") or info.data.get("jwt_public_key")):
            raise ValueError("set one of --jwt-secret, --jwt-public-key and --jwt-jwks-url")
        return None if value is None else _check_service_url(value)

    @field_validator("auth_proxy")
    @classmethod
    def _check_auth_proxy(cls, value: str | None) -> str | None:
        return None if value is None else _check_service_url(value)

    @field_validator("auth_proxy_publish")
    @classmethod
    def _check_proxy_publish(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("auth_proxy") is None and "auth_proxy" in info.data:
            raise ValueError("it needs --auth-proxy URL, the endpoint to ask")
        return value

    @field_validator("jwt_audience", "jwt_issuer")
    @classmethod
    def _check_claim(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty: give the claim tokens must carry, or leave it unset")
        return value

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        if value in ("memory", "memory://"):
            return value
        if value.startswith(("redis://", "rediss://")):
            problem = _redis_url_problem(value)
            if problem is not None:
                raise ValueError(
                    f"{problem} (expected redis://host:port/db, like redis://localhost:6379/0)"
                )
            return value
        raise ValueError("expected 'memory' or a redis:// URL")

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str, info: ValidationInfo) -> str:
        # SPEC §6/§8: with the Redis backend, tasks live in Redis (every node sees them).
        backend = info.data.get("backend")
        redis_backend = isinstance(backend, str) and backend.startswith(("redis://", "rediss://"))
        if value == "auto":
            return "redis" if redis_backend else DEFAULT_SQLITE_STORE
        if value == "redis":
            if not redis_backend:
                raise ValueError(
                    "'redis' keeps tasks in the backend's Redis: it needs --backend redis://..."
                )
            return value
        if value in ("memory", "memory://"):
            return value
        if value.startswith("sqlite:///"):
            path = value.removeprefix("sqlite:///")
            if not path or path.endswith("/"):
                raise ValueError(
                    "expected the path of a database file, like sqlite:///./tidings.db"
                )
            return value
        raise ValueError("expected 'auto', 'sqlite:///path', 'memory' or 'redis'")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _check_workers(self) -> Settings:
        if self.workers > 1 and self.backend in ("memory", "memory://"):
            raise ValueError(
                "workers: more than one worker needs --backend redis://... to act as one hub"
            )
        if self.workers > 1 and self.store in ("memory", "memory://", "sqlite:///:memory:"):
            raise ValueError(
                f"store: {self.store!r} keeps tasks inside each worker, so they would come and "
                "go between requests; with --workers use --store redis (or sqlite:///path)"
            )
        return self

    @property
    def jwt_enabled(self) -> bool:
        """Whether JWTs are verified: a secret, a public key or a JWKS URL is configured."""
        keys = (self.jwt_secret, self.jwt_public_key, self.jwt_jwks_url)
        return any(key is not None for key in keys)

    @property
    def auth_enabled(self) -> bool:
        """Whether authentication is on: JWTs, or an auth proxy."""
        return self.jwt_enabled or self.auth_proxy is not None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _normal_origin(origin: str) -> str:
    """``origin`` as browsers write it in ``Origin``, or ``ValueError`` saying why it never is.

    The scheme and host are lower-cased and a default port (``:443`` for https) dropped,
    as browsers do; wildcards, user names, paths and bad ports are refused.
    """
    scheme, sep, rest = origin.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError("the scheme must be http:// or https://")
    if any(char in rest for char in "/?#"):
        raise ValueError("it has a path, a query or a trailing slash")
    if "@" in rest:
        raise ValueError("browsers never send a user name")
    if "*" in rest:
        raise ValueError("wildcards are not supported: list each origin")
    if rest.startswith("["):
        inner, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError("an IPv6 address goes in brackets, followed by :port or nothing")
        try:
            host = f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise ValueError(f"{inner!r} is not an IPv6 address") from None
        has_port, port = bool(after), after.removeprefix(":")
    else:
        host, colon, port = rest.partition(":")
        has_port = bool(colon)
        if not host.isascii():
            raise ValueError("write the host in its ASCII (xn--) form, as browsers send it")
        host = host.lower()
        if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
            raise ValueError("the host is not a host name or an address")
    if not has_port:
        return f"{scheme}://{host}"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("the port is not a number from 1 to 65535")
    if int(port) == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"  # browsers leave the default port out
    return f"{scheme}://{host}:{int(port)}"


def _redis_url_problem(url: str) -> str | None:
    """What is wrong with the Redis URL ``url`` (redis-py would fail or guess), or ``None``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return _parse_problem(exc)
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "the port is not a number from 1 to 65535"
    if parts.path not in ("", "/") and re.fullmatch(r"/\d+", parts.path) is None:
        return f"the database {parts.path[1:]!r} is not a number"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "db" and not value.isdigit():
            return f"the database {value!r} is not a number"
    return None


def _parse_problem(exc: ValueError) -> str:
    """Why ``urlsplit`` (or its ``port``) refused a URL, in the words of our messages."""
    text = str(exc)
    if "Port" in text:
        return "the port is not a number from 1 to 65535"
    if "IPv6" in text:
        return "the address in brackets is not an IPv6 address"
    return text


def _check_service_url(url: str) -> str:
    """``url`` if the hub can fetch it: ``http(s)://host[:port][/path][?query]``, with no
    user name or password (the hub sends the caller's credentials, never its own from a
    URL that logs could show).

    Raises:
        ValueError: it cannot (the message says why).
    """
    problem = _http_url_problem(url)
    if problem is None:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            problem = "it has a user name or password"
        elif parts.fragment or url.endswith("#"):
            problem = "it has a fragment"
    if problem is not None:
        raise ValueError(f"{problem} (expected e.g. https://app.example/auth)")
    return url


def _http_url_problem(url: str) -> str | None:
    """What keeps ``url`` from being ``http(s)://host[:port]...``, or ``None``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return _parse_problem(exc)
    if any(char.isspace() for char in url):
        return "it has spaces"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http:// or https://"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "the port is not a number from 1 to 65535"
    return None


def _redact_url(url: str) -> str:
    """``url`` with the password of its user part masked."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def check_hub_url(url: str, *, flag: str = "--url") -> str:
    """``url`` if it can name a hub: ``http(s)://host[:port][/prefix]``.

    Every client command checks its ``--url`` here, before it connects.

    Raises:
        ConfigError: it cannot (the message names ``flag`` and says why).
    """
    problem = _http_url_problem(url)
    if problem is None:
        parts = urlsplit(url)
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            problem = "a hub URL has no query or fragment"
    if problem is not None:
        raise ConfigError(
            f"invalid {flag}: {url!r} (expected e.g. http://127.0.0.1:8000; {problem})"
        )
    return url


def load_settings(**given: Any) -> Settings:
    """Build :class:`Settings` from ``given`` values over the environment.

    Raises:
        ConfigError: a value is invalid; the message names the flag and the variable.
    """
    try:
        return Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error["loc"]
        message = error["msg"].removeprefix("Value error, ")
        name = str(loc[0]) if loc else message.partition(":")[0]
        if not loc:
            message = message.partition(": ")[2] or message
        flag = "--" + name.replace("_", "-")
        raw = error.get("input")
        if name == "backend" and isinstance(raw, str):
            raw = _redact_url(raw)
        # Keys, and URLs that may carry a user name or a key in their query, are never shown.
        hidden = name.startswith("jwt") or name == "auth_proxy" or isinstance(raw, dict)
        shown = "" if hidden else f" (got {raw!r})"
        raise ConfigError(f"invalid {flag} / TIDINGS_{name.upper()}: {message}{shown}") from None
