"""Settings: one model holds every setting's default, type, variable, validation and help.

Each field is a ``tidings serve`` flag (``--queue-size``) and a ``TIDINGS_<NAME>`` variable
(``TIDINGS_QUEUE_SIZE``); a flag beats the environment, which beats the default. Building
:class:`Settings` only validates: nothing connects or opens files here.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

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

__all__ = ["Settings", "is_loopback", "load_settings"]

_ORIGIN_RE = re.compile(r"https?://[^/\s?#]+")
#: The task store ``--store auto`` means without a Redis backend.
DEFAULT_SQLITE_STORE = "sqlite:///./tidings.db"


class Settings(BaseSettings):
    """Every setting of a tidings hub (SPEC §8). Durations are seconds unless named."""

    model_config = SettingsConfigDict(
        env_prefix="TIDINGS_", extra="forbid", validate_default=True, frozen=True
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
    allow_query_token: bool = Field(
        False, description="Accept the token in the 'token' query parameter (for EventSource)."
    )
    cors_origin: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Allowed CORS origin (repeatable; comma-separated in the environment).",
    )
    keepalive: float = Field(15.0, gt=0, description="Seconds of silence before a ': ping'.")
    history_size: int = Field(1000, ge=0, description="Events kept per topic for resume.")
    history_ttl: float = Field(3600.0, gt=0, description="Seconds an event stays in history.")
    queue_size: int = Field(1000, ge=1, description="Events queued per connection at most.")
    queue_bytes: int = Field(
        1024 * 1024, ge=1024, description="Bytes queued per connection at most."
    )
    max_connections_per_user: int = Field(
        100, ge=0, description="Open streams per user (0: no limit)."
    )
    max_connections_per_ip: int = Field(
        1000, ge=0, description="Open streams per client IP (0: no limit)."
    )
    connect_rate_limit: float = Field(
        50.0, ge=0, description="Stream attempts per IP per second (0: no limit)."
    )
    publish_rate_limit: float = Field(
        1000.0, ge=0, description="Publishes per principal per second (0: no limit)."
    )
    max_event_bytes: int = Field(65536, ge=1, description="Largest event data, in bytes of JSON.")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body, in bytes.")
    max_header_bytes: int = Field(
        32768,
        ge=4096,
        le=1024 * 1024,
        description="Largest request line plus headers, in bytes (414/431 beyond).",
    )
    request_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a whole request (line, headers, body); "
        "slower ones are cut.",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="Proxy addresses trusted to set X-Forwarded-For/-Proto (repeatable; "
        "'*' trusts all): the client IP of per-IP limits comes from them.",
    )
    retry: int = Field(3000, ge=0, description="Reconnect delay sent to clients, in ms.")
    shutdown_grace: float = Field(
        10.0, ge=0, description="Seconds to flush and end streams on shutdown."
    )
    max_connection_age: float | None = Field(
        None, gt=0, description="End streams older than this (with jitter); off by default."
    )
    task_retention: float = Field(
        86400.0, gt=0, description="Seconds a finished task is kept before it is purged."
    )
    insecure: bool = Field(
        False, description="Allow binding a non-loopback address with authentication off."
    )
    log_level: str = Field("info", description="Log level: critical, error, warning, info, debug.")
    workers: int = Field(1, ge=1, le=64, description="Server processes (needs --backend redis).")

    @field_validator("cors_origin", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origin")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and _ORIGIN_RE.fullmatch(origin) is None:
                raise ValueError(
                    f"{origin!r} is not an origin like https://app.example.com (a scheme and a "
                    "host, an optional port, no path or trailing slash)"
                )
        return value

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

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        if value in ("memory", "memory://") or value.startswith(("redis://", "rediss://")):
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
        if value in ("memory", "memory://") or value.startswith("sqlite:///"):
            return value
        raise ValueError("expected 'auto', 'sqlite:///path', 'memory' or 'redis'")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.lower()
        if level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError("expected one of critical, error, warning, info, debug")
        return level

    @model_validator(mode="after")
    def _check_workers(self) -> Settings:
        if self.workers > 1 and self.backend in ("memory", "memory://"):
            raise ValueError(
                "workers: more than one worker needs --backend redis://... to act as one hub"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        """Whether JWT authentication is configured."""
        return self.jwt_secret is not None or self.jwt_public_key is not None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        shown = "" if name.startswith("jwt") or isinstance(raw, dict) else f" (got {raw!r})"
        raise ConfigError(f"invalid {flag} / TIDINGS_{name.upper()}: {message}{shown}") from None
