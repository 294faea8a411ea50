"""Events: the frame each published event is encoded to, once."""

from __future__ import annotations

from tidings.events import Event, EventId, make_draft
from tidings.wire import EventParser


def test_a_frame_has_exactly_the_spec_fields() -> None:
    draft = make_draft("chat/general", {"text": "hi"}, type="chat_message", retry=500)
    event = Event.from_draft(draft, EventId("abcd1234", 7))
    assert event.frame == (
        b'id: abcd1234-7\nevent: chat_message\nretry: 500\ndata: {"text":"hi"}\n\n'
    )
    assert event.chunk == b"%x\r\n%b\r\n" % (len(event.frame), event.frame)


def test_a_timed_frame_carries_its_publish_time_in_milliseconds_which_parsers_ignore() -> None:
    """Issue 20: a stream that asks (``time=1``) gets when the hub took the publish
    (``time:``, Unix ms), for readers that show it (the dashboard's feed); a WHATWG parser
    ignores the field."""
    draft = make_draft("chat/general", {"text": "hi"}, type="chat_message", retry=500)
    event = Event.from_draft(draft, EventId("abcd1234", 7))
    millis = int(draft.time * 1000)
    frame, chunk = event.timed()
    assert frame == (
        b"id: abcd1234-7\nevent: chat_message\nretry: 500\n"
        + f"time: {millis}\n".encode()
        + b'data: {"text":"hi"}\n\n'
    )
    assert event.timed() is event.timed()  # made once
    parser = EventParser()
    (parsed,) = parser.feed(frame)
    assert (parsed.id, parsed.event, parsed.data) == ("abcd1234-7", "chat_message", '{"text":"hi"}')
    assert parser.retry == 500
    assert chunk == b"%x\r\n%b\r\n" % (len(frame), frame)
