"""Tests for tidings.wire: the SSE encoder and the WHATWG-conformant parser (SPEC §1)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import events
from tidings.errors import InvalidEvent
from tidings.types import JSON
from tidings.wire import (
    KEEPALIVE,
    EventParser,
    ServerSentEvent,
    encode_comment,
    encode_event,
    encode_retry,
    parse,
    validate_field,
)

# --- helpers and strategies ----------------------------------------------------------------

FORBIDDEN = ("\r", "\n", "\0")


def normalize_newlines(text: str) -> str:
    """What a WHATWG parser gives back for data sent with these line breaks."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def feed_in_chunks(
    data: bytes, cuts: list[int], parser: EventParser | None = None
) -> list[ServerSentEvent]:
    """Feed ``data`` to one parser, split at the byte offsets in ``cuts``."""
    parser = parser if parser is not None else EventParser()
    events: list[ServerSentEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        events.extend(parser.feed(data[start:cut]))
        start = cut
    return events


def feed_bytewise(data: bytes) -> list[ServerSentEvent]:
    parser = EventParser()
    events: list[ServerSentEvent] = []
    for i in range(len(data)):
        events.extend(parser.feed(data[i : i + 1]))
    return events


# Text that UTF-8 can encode (no lone surrogates).
unicode_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
line_breaky_text = st.lists(
    st.one_of(unicode_text, st.sampled_from(["\r", "\n", "\r\n", "\n\r", "\r\r", " ", ":"]))
).map("".join)
field_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0"),
    min_size=1,
)
event_types = st.one_of(st.just("message"), field_text)
ids = field_text
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | unicode_text,
    lambda children: st.lists(children) | st.dictionaries(unicode_text, children),
    max_leaves=20,
)
json_text = json_values.map(lambda value: orjson.dumps(value).decode())
data_text = st.one_of(unicode_text, line_breaky_text, json_text)
retries = st.none() | st.integers(min_value=0, max_value=2**40)
text_with_forbidden = st.tuples(unicode_text, st.sampled_from(FORBIDDEN), unicode_text).map("".join)


@st.composite
def cut_points(draw: st.DrawFn, data: bytes) -> list[int]:
    return draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=8))


# --- encode_event ----------------------------------------------------------------------------


def test_encode_event_writes_fields_in_spec_order() -> None:
    encoded = encode_event("hello", event="greeting", id="42", retry=3000)
    assert encoded == b"id: 42\nevent: greeting\nretry: 3000\ndata: hello\n\n"


def test_encode_event_with_only_data_writes_one_data_line() -> None:
    assert encode_event("hello") == b"data: hello\n\n"


def test_message_event_type_is_omitted() -> None:
    assert encode_event("x", event="message", id="1") == b"id: 1\ndata: x\n\n"


def test_empty_id_is_written_to_reset_last_event_id() -> None:
    assert encode_event("x", id="") == b"id: \ndata: x\n\n"


def test_encode_event_is_utf8() -> None:
    assert encode_event("héllo 🎉") == "data: héllo 🎉\n\n".encode()


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_line_break_in_data_splits_into_data_lines(newline: str) -> None:
    encoded = encode_event(f"a{newline}b{newline}c")
    assert encoded == b"data: a\ndata: b\ndata: c\n\n"
    assert parse(encoded) == [ServerSentEvent(data="a\nb\nc")]


def test_crlf_in_data_splits_into_data_lines() -> None:
    assert encode_event("a\r\nb") == b"data: a\ndata: b\n\n"


def test_lf_cr_in_data_is_two_line_breaks() -> None:
    assert encode_event("a\n\rb") == b"data: a\ndata: \ndata: b\n\n"


def test_trailing_and_leading_line_breaks_in_data_survive() -> None:
    encoded = encode_event("\nmiddle\n")
    assert encoded == b"data: \ndata: middle\ndata: \n\n"
    assert parse(encoded) == [ServerSentEvent(data="\nmiddle\n")]


def test_empty_data_round_trips_as_empty_event() -> None:
    encoded = encode_event("")
    assert encoded == b"data: \n\n"
    assert parse(encoded) == [ServerSentEvent(data="")]


def test_data_starting_with_space_keeps_its_space() -> None:
    assert parse(encode_event("  two spaces")) == [ServerSentEvent(data="  two spaces")]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\0b", "\n", "\0"])
def test_line_break_or_nul_in_event_type_raises_invalid_event(bad: str) -> None:
    with pytest.raises(InvalidEvent, match="event type must not contain CR, LF or NUL"):
        encode_event("x", event=bad)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\0b", "\n", "\0"])
def test_line_break_or_nul_in_id_raises_invalid_event(bad: str) -> None:
    with pytest.raises(InvalidEvent, match="id must not contain CR, LF or NUL"):
        encode_event("x", id=bad)


def test_empty_event_type_raises_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="event type must not be empty"):
        encode_event("x", event="")


@pytest.mark.parametrize("bad", [-1, True, False, 1.5, "100"])
def test_retry_that_is_not_a_non_negative_int_raises_invalid_event(bad: Any) -> None:
    with pytest.raises(InvalidEvent, match="retry"):
        encode_event("x", retry=bad)


def test_retry_zero_is_allowed() -> None:
    assert encode_event("x", retry=0) == b"retry: 0\ndata: x\n\n"


def test_lone_surrogate_raises_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="not valid Unicode"):
        encode_event("bad\udc80")
    with pytest.raises(InvalidEvent, match="not valid Unicode"):
        encode_event("x", event="bad\udc80")
    with pytest.raises(InvalidEvent, match="not valid Unicode"):
        encode_event("x", id="bad\udc80")
    with pytest.raises(InvalidEvent, match="not valid Unicode"):
        encode_comment("bad\udc80")


def test_invalid_event_is_a_422() -> None:
    with pytest.raises(InvalidEvent) as info:
        encode_event("x", id="a\nb")
    assert info.value.status == 422
    assert info.value.code == "invalid_event"


# --- validate_field, encode_comment, encode_retry, KEEPALIVE -------------------------------


def test_validate_field_returns_a_clean_value() -> None:
    assert validate_field("task_progress", name="event type") == "task_progress"
    assert validate_field("", name="id") == ""


@pytest.mark.parametrize("bad", ["\r", "\n", "\0", "a\r\nb"])
def test_validate_field_names_the_field_in_its_error(bad: str) -> None:
    with pytest.raises(InvalidEvent, match=r"^topic type must not contain CR, LF or NUL$"):
        validate_field(bad, name="topic type")


def test_keepalive_is_a_ping_comment() -> None:
    assert KEEPALIVE == b": ping\n\n"


def test_encode_comment_defaults_to_empty_comment() -> None:
    assert encode_comment() == b": \n\n"


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_comment_with_line_breaks_becomes_several_comment_lines(newline: str) -> None:
    assert encode_comment(f"one{newline}two") == b": one\n: two\n\n"


def test_comments_dispatch_no_event() -> None:
    seen: list[str] = []
    parser = EventParser(on_comment=seen.append)
    assert parser.feed(KEEPALIVE + encode_comment("a\nb")) == []
    assert seen == ["ping", "a", "b"]


def test_encode_retry_writes_a_lone_retry_field() -> None:
    assert encode_retry(3000) == b"retry: 3000\n\n"
    parser = EventParser()
    assert parser.feed(encode_retry(3000)) == []
    assert parser.retry == 3000


@pytest.mark.parametrize("bad", [-1, True, 2.0])
def test_encode_retry_rejects_bad_values(bad: Any) -> None:
    with pytest.raises(InvalidEvent):
        encode_retry(bad)


# --- parser: lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("newline", [b"\n", b"\r", b"\r\n"])
def test_parser_accepts_each_line_ending(newline: bytes) -> None:
    stream = newline.join([b"event: e", b"id: 7", b"data: a", b"data: b", b"", b""])
    assert parse(stream) == [ServerSentEvent(data="a\nb", event="e", id="7")]


def test_parser_accepts_mixed_line_endings() -> None:
    stream = b"data: a\rdata: b\ndata: c\r\n\r\n"
    assert parse(stream) == [ServerSentEvent(data="a\nb\nc")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    parser = EventParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [ServerSentEvent(data="a\nb")]
    assert parser.feed(b"\n") == []


def test_cr_at_chunk_end_followed_by_cr_is_two_line_ends() -> None:
    parser = EventParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [ServerSentEvent(data="a")]


def test_cr_at_chunk_end_dispatches_without_waiting_for_next_chunk() -> None:
    parser = EventParser()
    assert parser.feed(b"data: a\r\r") == [ServerSentEvent(data="a")]
    # The LF that may follow belongs to the second CR: it must not end another line.
    assert parser.feed(b"\ndata: b\n\n") == [ServerSentEvent(data="b")]


def test_empty_chunk_between_cr_and_lf_keeps_them_together() -> None:
    parser = EventParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [ServerSentEvent(data="a")]


def test_line_split_across_many_chunks_is_joined() -> None:
    parser = EventParser()
    for piece in (b"da", b"ta", b":", b" hel", b"lo"):
        assert parser.feed(piece) == []
    assert parser.feed(b"\n\n") == [ServerSentEvent(data="hello")]


def test_unterminated_final_event_is_not_dispatched() -> None:
    assert parse(b"data: complete\n\ndata: cut off\n") == [ServerSentEvent(data="complete")]


# --- parser: BOM and UTF-8 --------------------------------------------------------------------


def test_leading_bom_is_stripped() -> None:
    assert parse(b"\xef\xbb\xbfdata: x\n\n") == [ServerSentEvent(data="x")]


def test_leading_bom_split_across_chunks_is_stripped() -> None:
    assert feed_bytewise(b"\xef\xbb\xbfdata: x\n\n") == [ServerSentEvent(data="x")]


def test_only_one_leading_bom_is_stripped() -> None:
    # The second BOM is part of the field name "\ufeffdata", which is unknown and ignored.
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_bom_after_stream_start_is_not_stripped() -> None:
    parser = EventParser()
    assert parser.feed(b"data: a\n\n") == [ServerSentEvent(data="a")]
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\n") == []
    assert parser.feed(b"data: \xef\xbb\xbfc\n\n") == [ServerSentEvent(data="\ufeffc")]


def test_multibyte_utf8_split_at_every_byte_boundary_is_decoded() -> None:
    text = "héllo 🎉 世界 Ωμέγα"
    stream = encode_event(text, event="ünï", id="ïd🎉")
    expected = [ServerSentEvent(data=text, event="ünï", id="ïd🎉")]
    for cut in range(len(stream) + 1):
        assert feed_in_chunks(stream, [cut]) == expected, cut
    assert feed_bytewise(stream) == expected


def test_invalid_utf8_is_replaced() -> None:
    assert parse(b"data: a\xffb\xc3\n\n") == [ServerSentEvent(data="a\ufffdb\ufffd")]


# --- parser: fields ---------------------------------------------------------------------------


def test_data_without_space_after_colon_is_read() -> None:
    assert parse(b"data:x\n\n") == [ServerSentEvent(data="x")]


def test_only_one_space_after_colon_is_stripped() -> None:
    assert parse(b"data:  x \n\n") == [ServerSentEvent(data=" x ")]


def test_value_is_split_on_first_colon_only() -> None:
    assert parse(b"data: a: b:c\n\n") == [ServerSentEvent(data="a: b:c")]


def test_field_without_colon_has_empty_value() -> None:
    # "data" alone appends an empty line; two of them give one LF after the trailing LF goes.
    assert parse(b"data\ndata\n\n") == [ServerSentEvent(data="\n")]
    assert parse(b"data\n\n") == [ServerSentEvent(data="")]


def test_id_without_colon_resets_last_event_id() -> None:
    parser = EventParser()
    parser.feed(b"id: 5\ndata: a\n\n")
    assert parser.feed(b"id\ndata: b\n\n") == [ServerSentEvent(data="b", id="")]
    assert parser.last_event_id == ""


def test_event_without_colon_means_message() -> None:
    assert parse(b"event\ndata: x\n\n") == [ServerSentEvent(data="x", event="message")]


def test_field_names_are_case_sensitive() -> None:
    assert parse(b"Data: x\nDATA: y\n\n") == []


def test_unknown_fields_are_ignored() -> None:
    assert parse(b"foo: bar\ndata: x\nbaz\n\n") == [ServerSentEvent(data="x")]


def test_last_event_type_field_wins() -> None:
    assert parse(b"event: a\nevent: b\ndata: x\n\n") == [ServerSentEvent(data="x", event="b")]


def test_event_type_resets_after_dispatch() -> None:
    stream = b"event: a\ndata: 1\n\ndata: 2\n\n"
    assert parse(stream) == [ServerSentEvent(data="1", event="a"), ServerSentEvent(data="2")]


def test_empty_data_buffer_dispatches_nothing_and_resets_event_type() -> None:
    stream = b"event: a\nid: 3\n\ndata: x\n\n"
    assert parse(stream) == [ServerSentEvent(data="x", event="message", id="3")]


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert parse(b"\n\n\r\n\r\r") == []


def test_last_event_id_persists_across_events() -> None:
    parser = EventParser()
    events = parser.feed(b"id: 1\ndata: a\n\ndata: b\n\n")
    assert events == [ServerSentEvent(data="a", id="1"), ServerSentEvent(data="b", id="1")]
    assert parser.last_event_id == "1"


def test_id_on_event_without_data_still_sets_last_event_id() -> None:
    parser = EventParser()
    assert parser.feed(b"id: 9\n\n") == []
    assert parser.last_event_id == "9"
    assert parser.feed(b"data: x\n\n") == [ServerSentEvent(data="x", id="9")]


def test_id_containing_nul_is_ignored() -> None:
    parser = EventParser()
    events = parser.feed(b"id: 1\n\nid: 2\x003\ndata: x\n\n")
    assert events == [ServerSentEvent(data="x", id="1")]
    assert parser.last_event_id == "1"


def test_nul_in_data_is_kept() -> None:
    assert parse(b"data: a\x00b\n\n") == [ServerSentEvent(data="a\0b")]


@pytest.mark.parametrize("value", [b"", b"12a", b"-5", b"1.5", b" 10", b"\xd9\xa3", b"\xc2\xb2"])
def test_retry_with_non_digits_is_ignored(value: bytes) -> None:
    # b" 10" keeps a space after one is stripped; \xd9\xa3 is ARABIC-INDIC DIGIT THREE and
    # \xc2\xb2 is SUPERSCRIPT TWO: digits to Python, but not ASCII digits.
    parser = EventParser()
    assert parser.feed(b"retry: 100\n\nretry: " + value + b"\ndata: x\n\n") == [
        ServerSentEvent(data="x")
    ]
    assert parser.retry == 100


def test_retry_with_ascii_digits_sets_reconnection_time() -> None:
    parser = EventParser()
    assert parser.retry is None
    assert parser.feed(b"retry:0750\ndata: x\n\n") == [ServerSentEvent(data="x", retry=750)]
    assert parser.retry == 750


def test_retry_belongs_only_to_the_event_it_came_with() -> None:
    events = parse(b"retry: 5\ndata: a\n\ndata: b\n\n")
    assert events == [ServerSentEvent(data="a", retry=5), ServerSentEvent(data="b")]


def test_comment_text_goes_to_on_comment_with_one_space_stripped() -> None:
    seen: list[str] = []
    parser = EventParser(on_comment=seen.append)
    events = parser.feed(b": ping\n:no space\n:  two\n:\ndata: x\n: inside\n\n")
    assert events == [ServerSentEvent(data="x")]
    assert seen == ["ping", "no space", " two", "", "inside"]


def test_comments_are_ignored_without_on_comment() -> None:
    assert parse(b": hello\ndata: x\n\n") == [ServerSentEvent(data="x")]


# --- property tests -------------------------------------------------------------------------


@given(data=data_text, event=st.none() | event_types, id=st.none() | ids, retry=retries)
def test_encoded_event_round_trips_through_the_parser(
    data: str, event: str | None, id: str | None, retry: int | None
) -> None:
    expected = ServerSentEvent(
        data=normalize_newlines(data), event=event or "message", id=id or "", retry=retry
    )
    assert parse(encode_event(data, event=event, id=id, retry=retry)) == [expected]


@given(data=data_text, event=event_types, id=ids, chunks=st.data())
def test_encoded_event_round_trips_in_any_chunking(
    data: str, event: str, id: str, chunks: st.DataObject
) -> None:
    stream = encode_event(data, event=event, id=id)
    cuts = chunks.draw(cut_points(stream))
    expected = [ServerSentEvent(data=normalize_newlines(data), event=event, id=id)]
    assert feed_in_chunks(stream, cuts) == expected


@given(
    events=st.lists(
        st.tuples(data_text, st.none() | event_types, st.none() | ids, retries), max_size=10
    ),
    chunks=st.data(),
)
def test_sequence_of_events_round_trips(
    events: list[tuple[str, str | None, str | None, int | None]], chunks: st.DataObject
) -> None:
    stream = KEEPALIVE + encode_retry(1000)
    expected: list[ServerSentEvent] = []
    last_id = ""
    for data, event, id, retry in events:
        stream += encode_event(data, event=event, id=id, retry=retry) + KEEPALIVE
        last_id = id if id is not None else last_id
        expected.append(
            ServerSentEvent(
                data=normalize_newlines(data), event=event or "message", id=last_id, retry=retry
            )
        )
    cuts = chunks.draw(cut_points(stream))
    parser = EventParser()
    assert feed_in_chunks(stream, cuts, parser) == expected
    assert parser.last_event_id == last_id


@given(value=json_values)
def test_compact_json_stays_on_one_data_line(value: Any) -> None:
    text = orjson.dumps(value).decode()
    encoded = encode_event(text, event="update", id="1")
    assert encoded.count(b"\ndata: ") == 1
    assert parse(encoded) == [ServerSentEvent(data=text, event="update", id="1")]
    assert orjson.loads(parse(encoded)[0].data) == value


@given(bad=text_with_forbidden)
def test_cr_lf_or_nul_in_event_type_always_raises(bad: str) -> None:
    with pytest.raises(InvalidEvent):
        encode_event("x", event=bad)


@given(bad=text_with_forbidden)
def test_cr_lf_or_nul_in_id_always_raises(bad: str) -> None:
    with pytest.raises(InvalidEvent):
        encode_event("x", id=bad)


@given(chunk=st.binary(), cuts=st.lists(st.integers(min_value=0, max_value=64), max_size=8))
def test_parser_output_does_not_depend_on_chunking(chunk: bytes, cuts: list[int]) -> None:
    stream = chunk + b"\n\n"
    in_chunks = feed_in_chunks(stream, [min(cut, len(stream)) for cut in cuts])
    assert in_chunks == parse(stream)


@given(data=data_text)
def test_encode_comment_never_dispatches_an_event(data: str) -> None:
    seen: list[str] = []
    parser = EventParser(on_comment=seen.append)
    assert parser.feed(encode_comment(data)) == []
    assert seen == normalize_newlines(data).split("\n")


def test_orjson_writes_exactly_the_depth_the_depth_check_relies_on() -> None:
    """``dumps_json`` wraps a value so that orjson's own limit refuses one deeper than
    ``MAX_JSON_DEPTH``: that holds only while orjson stops at ``_ORJSON_DEPTH``."""

    def nested(depth: int) -> JSON:
        value: JSON = 0
        for _ in range(depth):
            value = [value]
        return value

    orjson.dumps(nested(events._ORJSON_DEPTH))
    with pytest.raises(orjson.JSONEncodeError, match="Recursion limit"):
        orjson.dumps(nested(events._ORJSON_DEPTH + 1))
    assert events.dumps_json(nested(events.MAX_JSON_DEPTH), "data").startswith(b"[[")
    with pytest.raises(InvalidEvent, match="data nests deeper than 128 levels"):
        events.dumps_json(nested(events.MAX_JSON_DEPTH + 1), "data")
