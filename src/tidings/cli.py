"""The ``tidings`` command: ``serve``, ``publish``, ``tail``, ``watch``, ``presence``,
``history``, ``disconnect``, ``bench``, ``demo``, ``token``.

``serve``'s flags are generated from :class:`~tidings.config.Settings`, so every setting has
its flag and nothing else does (``tests/cli/test_cli.py`` keeps them in step). Every failure is
one line on stderr and a non-zero exit (2 for bad usage or settings); never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from tidings._version import __version__
from tidings.config import Settings, check_hub_url, is_loopback, load_settings
from tidings.errors import ConfigError, InvalidTopic, TidingsError

if TYPE_CHECKING:
    import httpx

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
            if name == "jwt_secret" or default in (None, [], False)
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
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
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
    tail.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per event: {"id", "event", "data"} (data parsed when JSON)',
    )
    _add_client_flags(tail)

    watch = commands.add_parser(
        "watch",
        help="show a task's progress live until it ends",
        description="Show a task's progress (bar, rate, ETA, message, files) until it ends. "
        "Exit code: 0 completed, 1 failed or cancelled, 2 cannot watch.",
    )
    watch.add_argument("task_id", metavar="TASK_ID")
    watch.add_argument(
        "--json", action="store_true", help="print the task's state after each event as JSON"
    )
    _add_client_flags(watch)

    from tidings.topic_commands import add_topic_commands

    add_topic_commands(commands, client_flags=_add_client_flags)

    bench = commands.add_parser(
        "bench",
        help="a quick load check: N streams, M events, delivery and latency",
        description="Open N streams, publish M events at a rate over /publish, and report "
        "delivered/expected, deliveries/s, latency percentiles and stream-open time. Without "
        "--url it runs its own `tidings serve` on a free loopback port. Exit code 1 when an "
        "event was lost. The side-by-side comparison with other servers is `make bench`.",
    )
    from tidings.bench import add_bench_arguments

    add_bench_arguments(bench)
    _add_client_flags(bench, url_default=None)

    demo = commands.add_parser(
        "demo",
        help="simulated tasks, chat and requests that make the dashboard move",
        description="Publish simulated work through the Python publisher: a batch of images "
        "with per-file updates, a job that fails halfway, a cancelled job, chat messages on "
        "chat/general and request events on dashboard:requests. Without --url it starts "
        "its own hub on 127.0.0.1 (memory store) and prints the dashboard's URL.",
    )
    demo.add_argument(
        "--port", type=_port, default=8000, help="port of its own hub (default: 8000)"
    )
    demo.add_argument("--speed", type=float, default=1.0, help="run N times as fast (default: 1)")
    demo.add_argument("--once", action="store_true", help="run each task once, then exit")
    _add_client_flags(demo, url_default=None)

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


def _add_client_flags(
    parser: argparse.ArgumentParser, *, url_default: str | None = DEFAULT_URL
) -> None:
    if url_default is None:
        parser.add_argument("--url", default=None, help="hub URL (default: start one)")
    else:
        parser.add_argument(
            "--url",
            default=os.environ.get("TIDINGS_URL", url_default),
            help=f"hub URL (default: $TIDINGS_URL or {url_default})",
        )
    parser.add_argument(
        "--token",
        default=os.environ.get("TIDINGS_TOKEN"),
        help="bearer token (default: $TIDINGS_TOKEN)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidings`` command; returns the exit code."""
    from tidings.topic_commands import run_disconnect, run_history, run_presence

    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "presence": run_presence,
        "history": run_history,
        "disconnect": run_disconnect,
        "serve": _serve,
        "publish": _publish,
        "tail": _tail,
        "token": _token,
        "watch": _watch,
        "bench": _bench,
        "demo": _demo,
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
    from tidings.hub import serve_app
    from tidings.server import run

    return run(settings, serve_app)


def _publish(args: argparse.Namespace) -> int:
    import httpx

    url = check_hub_url(args.url)
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError:
        shown = args.data if len(args.data) <= 80 else f"{args.data[:80]}…"
        raise ConfigError(f"DATA is not valid JSON: {shown!r}") from None
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
        response = httpx.post(url.rstrip("/") + "/publish", json=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise TidingsError(f"cannot reach {args.url}: {exc}") from None
    if response.status_code != 202:
        raise TidingsError(_error_text(response))
    print(response.json()["id"])
    return 0


def _tail(args: argparse.Namespace) -> int:
    import httpx

    from tidings.client.subscriber import subscribe
    from tidings.topics import validate_pattern

    url = check_hub_url(args.url)
    for topic in args.topics:
        validate_pattern(topic)

    async def run() -> None:
        transport = _says_when_down(url)
        timeout = httpx.Timeout(10.0, read=None)
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
            async for event in subscribe(
                url,
                args.topics,
                last_event_id=args.last_event_id,
                token=args.token,
                client=client,
            ):
                if args.json:
                    data = {"id": event.id, "event": event.event, "data": _data(event)}
                    print(orjson.dumps(data).decode(), flush=True)
                else:
                    print(f"{event.id}  {event.event}  {event.data}", flush=True)

    asyncio.run(run())  # Ctrl-C ends it with 130, as every command
    return 0


def _says_when_down(url: str) -> httpx.AsyncBaseTransport:
    """An httpx transport that says once on stderr when the hub at ``url`` cannot be reached.

    ``subscribe`` retries with backoff by itself; without this, ``tail`` against a hub that
    is down would wait in silence. One line per outage: it is said again only after the hub
    answered in between.
    """
    import httpx

    class SaysWhenDown(httpx.AsyncHTTPTransport):
        down = False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                response = await super().handle_async_request(request)
            except httpx.TransportError as exc:
                self.say(str(exc) or type(exc).__name__)
                raise
            if response.status_code >= 500:
                self.say(f"HTTP {response.status_code}")
            else:
                self.down = False
            return response

        def say(self, why: str) -> None:
            if not self.down:
                self.down = True
                print(
                    f"tidings: cannot reach {url} ({' '.join(why.split())}); retrying until "
                    "it answers",
                    file=sys.stderr,
                    flush=True,
                )

    return SaysWhenDown()


def _data(event: Any) -> Any:
    """An event's data: parsed when it is JSON (tidings' own events are), else the text."""
    try:
        return orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return event.data


def _watch(args: argparse.Namespace) -> int:
    from tidings.errors import LimitExceeded, NotAuthorized, TaskNotFound
    from tidings.watch import run_watch

    url = check_hub_url(args.url)
    try:
        return run_watch(url, args.task_id, token=args.token, json=args.json)
    except TaskNotFound:
        message = f"no task {args.task_id!r} at {url}"
        if args.token:
            message += " (or the token may not see it)"
    except NotAuthorized as exc:
        message = exc.message
        if exc.status == 401:
            message += (
                " (the token was refused)" if args.token else " (pass --token or set TIDINGS_TOKEN)"
            )
    except LimitExceeded as exc:
        message = f"{exc.message} (retry in {exc.retry_after}s)"
    except TidingsError as exc:
        message = exc.message
    print(f"tidings: {message}", file=sys.stderr)
    return 2


def _bench(args: argparse.Namespace) -> int:
    from tidings.bench import run_bench

    if args.url is not None:
        check_hub_url(args.url)
    with _sigterm_as_ctrl_c():  # its own hub is stopped either way
        return run_bench(args)


def _demo(args: argparse.Namespace) -> int:
    from tidings.demo import main as run_demo

    url = None if args.url is None else check_hub_url(args.url)
    try:
        with _sigterm_as_ctrl_c():  # its own hub is stopped either way
            return run_demo(
                url=url, token=args.token, port=args.port, speed=args.speed, once=args.once
            )
    except KeyboardInterrupt:
        print("tidings demo: stopped", file=sys.stderr)
        return 0


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the command the way Ctrl-C does, so a hub it started is stopped too.

    The first SIGTERM goes to the current SIGINT handler (asyncio's, which cancels the main
    task, or Python's, which raises ``KeyboardInterrupt``); later ones are ignored while
    the command cleans up (it stops its hub within its grace, then kills it).
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIGINT is ignored (a background job): stop all the same
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _port(text: str) -> int:
    """A TCP port from 1 to 65535 (argparse type)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535 (got {text!r})")
    return port


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
    if not seconds > 0 or not math.isfinite(seconds):
        raise ConfigError(f"invalid {flag}: {text!r} (expected a positive duration, e.g. 1h)")
    return seconds


def _token(args: argparse.Namespace) -> int:
    from tidings.auth.jwt import MAX_TOKEN_TTL, mint_token

    secret = args.jwt_secret or os.environ.get("TIDINGS_JWT_SECRET")
    if not secret:
        raise ConfigError("no secret to sign with: pass --jwt-secret or set TIDINGS_JWT_SECRET")
    if not args.sub.strip():
        raise ConfigError("invalid --sub: empty (the hub refuses a token without a user id)")
    ttl = _duration(args.ttl, flag="--ttl")
    if ttl > MAX_TOKEN_TTL:
        raise ConfigError(f"invalid --ttl: {args.ttl!r} (at most {MAX_TOKEN_TTL // 86400}d)")
    for flag, value in (("--audience", args.audience), ("--issuer", args.issuer)):
        if value is not None and not value.strip():
            raise ConfigError(f"invalid {flag}: empty (leave it out for no claim)")
    print(
        mint_token(
            secret,
            sub=args.sub,
            subscribe=args.subscribe,
            publish=args.publish,
            admin=args.admin,
            ttl=ttl,
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
