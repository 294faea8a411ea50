"""``tidings presence``, ``tidings history`` and ``tidings disconnect``: a hub's presence,
history and server API from a terminal (SPEC §3), over its HTTP API.

Each follows every page (``next_cursor``, ``next_since``) and prints plain lines, or JSON
with ``--json``. A refusal is one line on stderr and exit code 1; a bad argument, 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import orjson

from tidings.config import check_hub_url
from tidings.errors import ConfigError, TidingsError
from tidings.topics import validate_pattern, validate_topic

__all__ = ["add_topic_commands", "run_disconnect", "run_history", "run_presence"]

ClientFlags = Callable[[argparse.ArgumentParser], None]


def add_topic_commands(commands: Any, *, client_flags: ClientFlags) -> None:
    """Add the three commands to ``commands`` (the ``tidings`` subparsers)."""
    presence = commands.add_parser(
        "presence",
        help="who is subscribed to a topic, on every node",
        description="Print the number of streams subscribed to TOPIC exactly, on every node, "
        "then one line per stream: connection id, user ('-' if anonymous), node, since.",
    )
    presence.add_argument("topic", metavar="TOPIC")
    presence.add_argument("--limit", type=_page, default=1000, help="entries per request")
    presence.add_argument(
        "--json",
        action="store_true",
        help='one JSON object: {"topic", "count", "connections": [...]}',
    )
    client_flags(presence)

    history = commands.add_parser(
        "history",
        help="the events a topic's history holds",
        description="Print TOPIC's events, oldest first (after --since), as `tail` does. "
        "When the history no longer holds every event after --since, say so on stderr.",
    )
    history.add_argument("topic", metavar="TOPIC")
    history.add_argument("--since", default=None, metavar="ID", help="events after this id")
    history.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per event: {"id", "type", "topic", "data", "published_at"}',
    )
    client_flags(history)

    disconnect = commands.add_parser(
        "disconnect",
        help="end the streams of a user or on a topic, on every node (admins)",
        description="End the streams of --user, or subscribed within --topic (a topic or "
        "pattern), or both, on every node; print how many. Each gets `event: disconnect` "
        "with the reason, then reconnects as usual.",
    )
    disconnect.add_argument("--user", default=None, help="the user whose streams end")
    disconnect.add_argument("--topic", default=None, help="a topic or pattern")
    disconnect.add_argument("--reason", default=None, help="sent to each stream")
    client_flags(disconnect)


def _page(text: str) -> int:
    """A page size from 1 to 1000 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 1000 (got {text!r})")
    return value


def run_presence(args: argparse.Namespace) -> int:
    """``tidings presence TOPIC``."""
    topic = validate_topic(args.topic)
    count = 0
    connections: list[dict[str, Any]] = []
    path = f"/topics/{quote(topic, safe='')}/presence"
    for page in _pages(args, path, "cursor", "next_cursor", limit=args.limit):
        count = page["count"]
        connections.extend(page["connections"])
    if args.json:
        print(orjson.dumps({"topic": topic, "count": count, "connections": connections}).decode())
        return 0
    print(f"{count} stream{'' if count == 1 else 's'}")
    for entry in connections:
        user = entry["user"] if entry["user"] is not None else "-"
        print(f"{entry['connection_id']}  {user}  {entry['node']}  {entry['since']}")
    return 0


def run_history(args: argparse.Namespace) -> int:
    """``tidings history TOPIC [--since ID]``."""
    topic = validate_topic(args.topic)
    path = f"/topics/{quote(topic, safe='')}/history"
    first = True
    for page in _pages(args, path, "since", "next_since", limit=100, start=args.since):
        if first and not page["complete"] and args.since is not None:
            print(
                f"tidings: the history no longer holds every event after {args.since}; "
                "showing from the oldest kept",
                file=sys.stderr,
            )
        first = False
        for event in page["events"]:
            if args.json:
                print(orjson.dumps(event).decode())
            else:
                data = orjson.dumps(event["data"]).decode()
                print(f"{event['id']}  {event['type']}  {data}")
    return 0


def run_disconnect(args: argparse.Namespace) -> int:
    """``tidings disconnect --user U | --topic T [--reason R]``."""
    import httpx

    if args.user is None and args.topic is None:
        raise ConfigError("disconnect needs --user, --topic or both")
    if args.topic is not None:
        validate_pattern(args.topic)
    body = {"user": args.user, "topic": args.topic, "reason": args.reason}
    url = check_hub_url(args.url).rstrip("/") + "/admin/disconnect"
    try:
        response = httpx.post(url, json=body, headers=_headers(args), timeout=30)
    except httpx.HTTPError as exc:
        raise TidingsError(f"cannot reach {args.url}: {exc}") from None
    print(_answer(response)["disconnected"])
    return 0


def _pages(
    args: argparse.Namespace,
    path: str,
    send: str,
    receive: str,
    *,
    limit: int,
    start: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Every page of ``path``: each answer's ``receive`` is the next request's ``send``."""
    import httpx

    url = check_hub_url(args.url).rstrip("/") + path
    position = start
    with httpx.Client(timeout=30, headers=_headers(args)) as client:
        while True:
            params: dict[str, str | int] = {"limit": limit}
            if position is not None:
                params[send] = position
            try:
                response = client.get(url, params=params)
            except httpx.HTTPError as exc:
                raise TidingsError(f"cannot reach {args.url}: {exc}") from None
            page = _answer(response)
            yield page
            position = page[receive]
            if position is None:
                return


def _headers(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.token}"} if args.token else {}


def _answer(response: Any) -> dict[str, Any]:
    """The JSON of a ``200``, or the refusal as one line."""
    if response.status_code == 200:
        body: dict[str, Any] = response.json()
        return body
    try:
        error = response.json()["error"]
        text = f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        text = f"HTTP {response.status_code}"
    raise TidingsError(text)
