"""``tidings presence``, ``tidings history`` and ``tidings disconnect`` against real servers."""

from __future__ import annotations

import asyncio
import subprocess

import httpx
import orjson
import pytest

from tests.conftest import ServerFactory, ServerProcess, run_main, run_tidings, until
from tests.web._security import SECRET, open_stream, token, topics


async def tidings(*args: str) -> subprocess.CompletedProcess[str]:
    """``tidings ARGS`` in a process of its own, without blocking the event loop."""
    return await asyncio.to_thread(run_tidings, *args)


async def test_presence_prints_the_count_then_a_line_per_stream(
    server: ServerProcess, http: httpx.AsyncClient, uid: str
) -> None:
    topic = f"{uid}/room"
    async with open_stream(http, topics(topic)), open_stream(http, topics(topic, "x")):

        async def both_there() -> bool:
            response = await http.get(f"/topics/{topic}/presence")
            return bool(response.json()["count"] == 2)

        await until(both_there, what="two streams in presence")
        shown = await tidings("presence", topic, "--url", server.url, "--limit", "1")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0] == "2 streams"
        assert len(lines) == 3  # every page followed
        ident, user, node, since = lines[1].split("  ")
        assert (user, since[-1]) == ("-", "Z")
        as_json = await tidings("presence", topic, "--url", server.url, "--json")
        body = orjson.loads(as_json.stdout)
        assert (body["topic"], body["count"]) == (topic, 2)
        assert [e["connection_id"] for e in body["connections"]] == [
            line.split("  ")[0] for line in lines[1:]
        ]
        assert body["connections"][0]["node"] == node
        assert ident == body["connections"][0]["connection_id"]


async def test_history_prints_the_events_after_an_id(
    server: ServerProcess, http: httpx.AsyncClient, uid: str
) -> None:
    topic = f"{uid}/feed"
    ids = []
    for i in range(105):  # more than a page
        response = await http.post("/publish", json={"topic": topic, "data": {"n": i}})
        ids.append(response.json()["id"])
    shown = await tidings("history", topic, "--url", server.url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines] == ids
    assert lines[7].split("  ", 2)[1:] == ["message", '{"n":7}']
    after = await tidings("history", topic, "--since", ids[100], "--json", "--url", server.url)
    events = [orjson.loads(line) for line in after.stdout.splitlines()]
    assert [(e["id"], e["data"]) for e in events] == [(ids[i], {"n": i}) for i in range(101, 105)]
    assert after.stderr == ""


async def test_history_says_when_it_no_longer_holds_every_event(
    server: ServerProcess, http: httpx.AsyncClient, uid: str
) -> None:
    topic = f"{uid}/feed"
    published = (await http.post("/publish", json={"topic": topic, "data": 1})).json()["id"]
    shown = await tidings("history", topic, "--since", "not-an-id", "--url", server.url)
    assert shown.returncode == 0
    assert shown.stdout.split("  ")[0] == published
    assert shown.stderr.startswith("tidings: the history no longer holds every event after")


async def test_disconnect_ends_the_streams_on_a_topic_and_prints_how_many(
    server: ServerProcess, http: httpx.AsyncClient, uid: str
) -> None:
    async with (
        open_stream(http, topics(f"{uid}/a")) as first,
        open_stream(http, topics(f"{uid}/b")) as second,
    ):

        async def registered() -> bool:
            response = await http.get(f"/topics/{uid}/b/presence")
            return bool(response.json()["count"] == 1)

        await until(registered, what="the streams to register")
        ended = await tidings(
            "disconnect", "--topic", f"{uid}/*", "--reason", "bye", "--url", server.url
        )
        assert (ended.returncode, ended.stdout, ended.stderr) == (0, "2\n", "")
        for stream in (first, second):
            [event] = await stream.until_end()
            assert (event.event, orjson.loads(event.data)) == ("disconnect", {"reason": "bye"})


async def test_a_refusal_is_one_line_and_exit_code_1(server_factory: ServerFactory) -> None:
    hub = await server_factory.start("--jwt-secret", SECRET)
    refused = await tidings("presence", "t", "--url", hub.url)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == "tidings: 401 unauthenticated: authentication required\n"
    not_admin = await tidings("disconnect", "--user", "u", "--url", hub.url, "--token", token())
    assert not_admin.returncode == 1
    assert not_admin.stderr == "tidings: 403 forbidden: admin only\n"
    admin = token("ops", admin=True)
    allowed = await tidings("disconnect", "--user", "u", "--url", hub.url, "--token", admin)
    assert (allowed.returncode, allowed.stdout) == (0, "0\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("disconnect",), "tidings: disconnect needs --user, --topic or both"),
        (("disconnect", "--topic", "a//b"), "tidings: invalid pattern 'a//b'"),
        (("presence", "a/*"), "tidings: invalid topic 'a/*'"),
        (("history", "a b"), "tidings: invalid topic 'a b'"),
        (("presence", "t", "--limit", "0"), "tidings: argument --limit: expected a number"),
        (("history", "t", "--url", "localhost:1"), "tidings: invalid --url: 'localhost:1'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_code_2(args: tuple[str, ...], message: str) -> None:
    done = run_main(*args)
    assert done.returncode == 2
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.splitlines()) == 1
