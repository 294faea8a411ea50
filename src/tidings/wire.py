"""Server-Sent Events on the wire: encode events to bytes, parse bytes back into events.

This module is pure: it knows nothing about ASGI, the hub or the network, so it is tested
without an event loop. The encoder writes the format of SPEC §1; the parser follows the WHATWG
HTML Living Standard, section 9.2.6 "Interpreting an event stream", to the letter, and the
tests check one against the other.

Decisions that may surprise:

- ``encode_event`` splits line breaks in ``data`` (``\\r\\n``, ``\\r``, ``\\n``) into several
  ``data:`` lines. A conformant parser joins them with ``\\n``, so ``\\r`` and ``\\r\\n`` come
  back as ``\\n``. That is the SSE format, not a bug: there is no way to send a bare CR.
- Every ``data:`` line is written as ``data: <line>``, with one space. The parser strips
  exactly one leading space, so data that itself starts with a space survives.
- Event types and ids must not contain CR, LF or NUL (SPEC §1): a line break would let a
  publisher forge fields or whole events, and browsers ignore an id holding NUL. They raise
  ``InvalidEvent``; nothing is escaped or dropped silently.
- ``EventParser`` has no ``close()``. At the end of the stream, WHATWG discards an event
  that was not ended by a blank line; so does this parser, by never dispatching it.
- A CR at the end of a chunk ends the line at once (no waiting for the next chunk); the
  parser then skips an LF if the next chunk starts with one, so CRLF split across chunks
  still counts as one line break.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

from tidings.errors import InvalidEvent
from tidings.types import ServerSentEvent

__all__ = [
    "KEEPALIVE",
    "EventParser",
    "ServerSentEvent",
    "encode_comment",
    "encode_event",
    "encode_retry",
    "parse",
    "validate_field",
]


def validate_field(value: str, *, name: str) -> str:
    """Check that an event type or id can be written on one SSE line, and return it.

    SPEC §1: event types and ids never contain CR, LF or NUL. A line break would end the
    field early and let the rest be read as other fields (a forged event); an id with NUL
    is ignored by WHATWG parsers, so the client's resume position would silently not move.

    Args:
        value: the event type or id to check.
        name: how to call the value in the error message, e.g. ``"event type"`` or ``"id"``.

    Returns:
        ``value`` unchanged.

    Raises:
        InvalidEvent: ``value`` contains CR, LF or NUL.
    """
    if "\n" in value or "\r" in value or "\0" in value:
        raise InvalidEvent(f"{name} must not contain CR, LF or NUL")
    return value


def _check_retry(retry: int) -> int:
    # bool is an int subclass, but ``retry=True`` is always a mistake.
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        raise InvalidEvent("retry must be a non-negative integer (milliseconds)")
    return retry


def _split_lines(text: str) -> list[str]:
    # WHATWG line ends are CRLF, CR and LF. Normalize CRLF first so it counts once.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _encode(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates (e.g. from a badly decoded JSON string) have no UTF-8 form.
        raise InvalidEvent(f"{what} is not valid Unicode: {exc.reason}") from exc


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event as SSE bytes (UTF-8), ready to write to every subscriber.

    The fields come in the order of SPEC §1: ``id:``, ``event:`` (left out for ``None`` and
    ``"message"``, the type a client assumes anyway), ``retry:``, then ``data`` as one
    ``data:`` line per line of text, then the blank line that ends the event. Each of
    ``\\r\\n``, ``\\r`` and ``\\n`` in ``data`` starts a new ``data:`` line, so a parser gives
    back ``data`` with every line break turned into ``\\n``. Empty ``data`` is one empty
    ``data:`` line, which a parser dispatches as an event with empty data.

    This runs once per published event, not once per subscriber; data without line breaks
    (the usual compact JSON) takes a fast path.

    Args:
        data: the payload text.
        event: the event type; ``None`` or ``"message"`` writes no ``event:`` line.
        id: the event id, which the client sends back as ``Last-Event-ID``. ``None`` writes
            no ``id:`` line; ``""`` writes an empty one, which resets the client's last id.
        retry: the reconnection delay, in milliseconds, for the client to use from now on.

    Returns:
        The encoded event.

    Raises:
        InvalidEvent: ``event`` or ``id`` contains CR, LF or NUL; ``event`` is empty;
            ``retry`` is not a non-negative integer; a string holds a lone surrogate.

    Example::

        >>> encode_event('{"percent": 40}', event="task_progress", id="17")
        b'id: 17\\nevent: task_progress\\ndata: {"percent": 40}\\n\\n'
    """
    head = ""
    if id is not None:
        head = "id: " + validate_field(id, name="id") + "\n"
    if event is not None and event != "message":
        if not event:
            raise InvalidEvent("event type must not be empty")
        head += "event: " + validate_field(event, name="event type") + "\n"
    if retry is not None:
        head += f"retry: {_check_retry(retry)}\n"
    if "\n" in data or "\r" in data:
        body = "".join(["data: " + line + "\n" for line in _split_lines(data)])
    else:
        body = "data: " + data + "\n"
    return _encode(head + body + "\n", "event")


def encode_comment(text: str = "") -> bytes:
    """Encode a comment block: ``": <text>"`` lines and a closing blank line.

    Clients ignore comments. They keep idle connections open and make proxies flush (the
    ``: ping`` keep-alive of SPEC §1). The closing blank line dispatches nothing, since no
    ``data:`` was sent. Text with line breaks becomes one comment line per line.

    Args:
        text: the comment text; may be empty.

    Returns:
        The encoded comment, e.g. ``b": ping\\n\\n"``.

    Raises:
        InvalidEvent: ``text`` holds a lone surrogate.
    """
    if "\n" in text or "\r" in text:
        lines = "".join([": " + line + "\n" for line in _split_lines(text)])
    else:
        lines = ": " + text + "\n"
    return _encode(lines + "\n", "comment")


def encode_retry(ms: int) -> bytes:
    """Encode a lone ``retry:`` field: the client waits ``ms`` milliseconds to reconnect.

    A stream opens with one (SPEC §1). It dispatches no event.

    Args:
        ms: the reconnection delay in milliseconds.

    Returns:
        ``b"retry: <ms>\\n\\n"``.

    Raises:
        InvalidEvent: ``ms`` is not a non-negative integer.
    """
    return f"retry: {_check_retry(ms)}\n\n".encode("ascii")


KEEPALIVE: bytes = encode_comment("ping")
"""The keep-alive comment sent after ``keepalive`` seconds of silence: ``b": ping\\n\\n"``."""


class EventParser:
    """Incremental parser for an ``text/event-stream`` body, per WHATWG HTML §9.2.6.

    Feed it the bytes as they arrive, in chunks of any size; it returns the events each
    chunk completes. It decodes UTF-8 with replacement of bad bytes (a character split
    across chunks is joined), strips one BOM at the very start of the stream, and accepts
    CRLF, LF and CR line ends (a CRLF split across chunks is one line end).

    Per the standard: a blank line dispatches the event; ``data:`` lines are joined with
    ``\\n``; an event with no ``data:`` line is not dispatched; ``id:`` sets the last event ID,
    which carries over to later events, unless the value holds NUL; ``retry:`` is used only
    if it is all ASCII digits; fields are case-sensitive and unknown ones are ignored; one
    space after the colon is stripped; a line with no colon is a field with an empty value.

    There is no ``close()``: an event not ended by a blank line when the stream ends is
    discarded, as the standard says, simply by never being dispatched.

    Args:
        on_comment: called with the text of each comment line (after the ``:``, one
            leading space stripped), e.g. to watch keep-alives. Comments are not stored.

    Attributes:
        last_event_id: the last event ID buffer; send it as ``Last-Event-ID`` to resume.
        retry: the last valid ``retry:`` value seen on the stream, in milliseconds, or
            ``None``.

    Example::

        >>> parser = EventParser()
        >>> parser.feed(b"id: 1\\nevent: greeting\\ndata: hel")
        []
        >>> parser.feed(b"lo\\n\\n")
        [ServerSentEvent(data='hello', event='greeting', id='1', retry=None)]
    """

    __slots__ = (
        "_data",
        "_decoder",
        "_event_retry",
        "_event_type",
        "_on_comment",
        "_partial",
        "_skip_lf",
        "_started",
        "last_event_id",
        "retry",
    )

    def __init__(self, *, on_comment: Callable[[str], None] | None = None) -> None:
        self.last_event_id: str = ""
        self.retry: int | None = None
        self._on_comment = on_comment
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # True until the first character is decoded: only there may a BOM be stripped.
        self._started = False
        # The last chunk ended with CR: drop an LF that starts the next one (split CRLF).
        self._skip_lf = False
        # Text of the current, unfinished line (never holds CR or LF).
        self._partial: list[str] = []
        # The data buffer as a list of lines; "empty data buffer" means no lines.
        self._data: list[str] = []
        self._event_type = ""
        self._event_retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse the next chunk of the stream and return the events it completes, in order.

        Args:
            chunk: the next bytes of the stream; may be empty or end mid-line or
                mid-character.

        Returns:
            The events dispatched by the blank lines in this chunk (often none).
        """
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            # WHATWG "UTF-8 decode" strips one leading BOM; later BOMs are content.
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if "\n" not in text and "\r" not in text:
            if text:
                self._partial.append(text)
            return []
        if self._partial:
            self._partial.append(text)
            text = "".join(self._partial)
            self._partial = []
        if "\r" in text:
            self._skip_lf = text[-1] == "\r"
            lines = _split_lines(text)
        else:
            lines = text.split("\n")
        tail = lines.pop()
        if tail:
            self._partial.append(tail)
        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                continue
            colon = line.find(":")
            if colon == 0:
                if self._on_comment is not None:
                    value = line[1:]
                    self._on_comment(value[1:] if value[:1] == " " else value)
                continue
            if colon > 0:
                name = line[:colon]
                value = line[colon + 1 :]
                if value[:1] == " ":
                    value = value[1:]
            else:
                name = line
                value = ""
            self._process_field(name, value)
        return events

    def _process_field(self, name: str, value: str) -> None:
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            # Only ASCII digits count; str.isdigit alone would accept "²" or "٣".
            self.retry = self._event_retry = int(value)
        # Any other field name, and a retry value that is not all ASCII digits, is ignored.

    def _dispatch(self) -> ServerSentEvent | None:
        data, event_type, retry = self._data, self._event_type, self._event_retry
        self._data = []
        self._event_type = ""
        self._event_retry = None
        if not data:
            return None
        # Joining the lines with "\n" equals WHATWG's "append value + LF, then remove the
        # single trailing LF".
        return ServerSentEvent(
            data="\n".join(data),
            event=event_type or "message",
            id=self.last_event_id,
            retry=retry,
        )


def parse(data: bytes) -> list[ServerSentEvent]:
    """Parse a complete event stream in one go.

    Same rules as ``EventParser``; a trailing event without its closing blank line is
    discarded.

    Args:
        data: the stream's bytes.

    Returns:
        The events, in order.

    Example::

        >>> parse(b"data: a\\ndata: b\\n\\n")
        [ServerSentEvent(data='a\\nb', event='message', id='', retry=None)]
    """
    return EventParser().feed(data)
