"""The ``tidings`` command: ``serve``, ``publish``, ``tail``, ``token``.

``serve``'s flags are generated from :class:`~tidings.config.Settings`, so every setting has
its flag and nothing else does (``tests/test_cli.py`` keeps them in step). Every failure is
one line on stderr and a non-zero exit (2 for bad usage or settings); never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import orjson

from tidings.config import Settings, is_loopback, load_settings
from tidings.errors import ConfigError, InvalidTopic, TidingsError

__all__ = ["main", "serve_parser_flags"]

DEFAULT_URL = "http://127.0.0.1:8000"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tidings: {message}\n")


def _field_kind(annotation: Any) -> str:
    """``switch``, ``list`` or ``value`` for a Settings field's annotation."""
    if annotation is bool:
        return "switch"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _field_kind(typing.get_args(annotation)[0])
    if origin is list:
        return "list"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _field_kind(args[0]) if len(args) == 1 else "value"
    return "value"


def serve_parser_flags() -> dict[str, str]:
    """Flag name → Settings field, for every setting (used by tests to keep them in step)."""
    return {"--" + name.replace("_", "-"): name for name in Settings.model_fields}


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _field_kind(field.annotation)
        env = f"TIDINGS_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        shown = (
            ""
            if name.startswith("jwt") or default in (None, [], False)
            else (f" (default: {default})")
        )
        help_text = f"{field.description}{shown} [{env}]"
        if kind == "switch":
            parser.add_argument(
                flag, dest=name, action="store_const", const=True, default=None, help=help_text
            )
        elif kind == "list":
            parser.add_argument(
                flag, dest=name, action="append", default=None, metavar="VALUE", help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, default=None, metavar="VALUE", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The ``tidings`` argument parser."""
    parser = _Parser(prog="tidings", description="tidings: a Server-Sent Events hub.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the hub server")
    _add_settings_flags(serve)

    publish = commands.add_parser("publish", help="publish one event")
    publish.add_argument("topic")
    publish.add_argument("data", help='the event data, as JSON (e.g. \'{"text": "hi"}\')')
    publish.add_argument("--type", default="message", help="event type (default: message)")
    publish.add_argument("--priority", default="normal", choices=["low", "normal", "high"])
    publish.add_argument("--user", action="append", dest="users", help="deliver only to user")
    publish.add_argument("--idempotency-key", default=None)
    _add_client_flags(publish)

    tail = commands.add_parser("tail", help="print the events of topics as they arrive")
    tail.add_argument("topics", nargs="+", metavar="TOPIC")
    tail.add_argument("--last-event-id", default=None, help="resume after this id")
    _add_client_flags(tail)

    token = commands.add_parser(
        "token", help="mint a development JWT (HS256) signed with the hub's secret"
    )
    token.add_argument("--sub", required=True, help="the user id (the 'sub' claim)")
    token.add_argument(
        "--subscribe", action="append", default=[], metavar="PATTERN", help="repeatable"
    )
    token.add_argument(
        "--publish", action="append", default=[], metavar="PATTERN", help="repeatable"
    )
    token.add_argument("--admin", action="store_true", help="may read /stats, /metrics, all tasks")
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h, 2d (default: 1h)")
    token.add_argument(
        "--jwt-secret", default=None, help="HS256 secret (default: $TIDINGS_JWT_SECRET)"
    )
    token.add_argument(
        "--audience",
        default=os.environ.get("TIDINGS_JWT_AUDIENCE"),
        help="'aud' claim (default: $TIDINGS_JWT_AUDIENCE)",
    )
    token.add_argument(
        "--issuer",
        default=os.environ.get("TIDINGS_JWT_ISSUER"),
        help="'iss' claim (default: $TIDINGS_JWT_ISSUER)",
    )
    return parser


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("TIDINGS_URL", DEFAULT_URL),
        help=f"hub URL (default: $TIDINGS_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TIDINGS_TOKEN"),
        help="bearer token (default: $TIDINGS_TOKEN)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidings`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": _serve,
        "publish": _publish,
        "tail": _tail,
        "token": _token,
    }
    try:
        return commands[args.command](args)
    except (ConfigError, InvalidTopic) as exc:
        print(f"tidings: {exc.message}", file=sys.stderr)
        return 2
    except TidingsError as exc:
        print(f"tidings: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"tidings: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    given = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    settings = load_settings(**given)
    from tidings.auth.jwt import JWTVerifier

    JWTVerifier.from_settings(settings)  # an unusable key stops start-up here, in one line
    if not settings.auth_enabled and not settings.insecure and not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to serve {settings.host} with authentication off; set --jwt-secret or "
            "--jwt-public-key, or pass --insecure"
        )
    from tidings.server import run

    return run(settings)


def _publish(args: argparse.Namespace) -> int:
    import httpx

    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError:
        raise ConfigError(f"DATA is not valid JSON: {args.data!r}") from None
    body: dict[str, Any] = {
        "topic": args.topic,
        "type": args.type,
        "data": data,
        "priority": args.priority,
    }
    if args.users:
        body["users"] = args.users
    if args.idempotency_key:
        body["idempotency_key"] = args.idempotency_key
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        response = httpx.post(
            args.url.rstrip("/") + "/publish", json=body, headers=headers, timeout=10
        )
    except httpx.HTTPError as exc:
        raise TidingsError(f"cannot reach {args.url}: {exc}") from None
    if response.status_code != 202:
        raise TidingsError(_error_text(response))
    print(response.json()["id"])
    return 0


def _tail(args: argparse.Namespace) -> int:
    from tidings.client.subscriber import subscribe
    from tidings.topics import validate_pattern

    for topic in args.topics:
        validate_pattern(topic)

    async def run() -> None:
        async for event in subscribe(
            args.url, args.topics, last_event_id=args.last_event_id, token=args.token
        ):
            print(f"{event.id}  {event.event}  {event.data}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str, *, flag: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``1h`` or ``2d``."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], 0)
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ConfigError(f"invalid {flag}: {text!r} (expected e.g. 90s, 30m, 1h, 2d)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"invalid {flag}: {text!r} (must be positive)")
    return seconds


def _token(args: argparse.Namespace) -> int:
    from tidings.auth.jwt import mint_token

    secret = args.jwt_secret or os.environ.get("TIDINGS_JWT_SECRET")
    if not secret:
        raise ConfigError("no secret to sign with: pass --jwt-secret or set TIDINGS_JWT_SECRET")
    print(
        mint_token(
            secret,
            sub=args.sub,
            subscribe=args.subscribe,
            publish=args.publish,
            admin=args.admin,
            ttl=_duration(args.ttl, flag="--ttl"),
            audience=args.audience,
            issuer=args.issuer,
        )
    )
    return 0


def _error_text(response: Any) -> str:
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
