"""HTTP/1.1 response heads: the one function that writes them, and the ``date`` it carries.

Every answer of the standalone server (an application's response, a stream's head, a
refusal before the application runs) gets its head from :func:`response_head`, so the
status line, the ``date`` header and the framing headers are written in one place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["CHUNKED_END", "response_head"]

#: The last chunk of a chunked body, with no trailers.
CHUNKED_END = b"0\r\n\r\n"

_STATUS_LINES: dict[int, bytes] = {}
_date: tuple[int, bytes] = (0, b"")


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            phrase = b""
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
    return line


def _date_header() -> bytes:
    """``date: <now>\\r\\n``, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, b"date: %s\r\n" % formatdate(now, usegmt=True).encode("ascii"))
    return _date[1]


def response_head(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    chunked: bool = False,
    content_length: int | None = None,
    close: bool = False,
) -> bytes:
    """The head of a response: status line, ``date``, ``headers``, then the framing.

    Args:
        headers: the response's own headers (lower-case names), written as given.
        chunked: add ``transfer-encoding: chunked`` (a body of unknown length).
        content_length: add ``content-length`` (when the headers lack one).
        close: add ``connection: close`` (the connection ends with this response).
    """
    parts = [_status_line(status), _date_header()]
    parts.extend(name + b": " + value + b"\r\n" for name, value in headers)
    if content_length is not None:
        parts.append(b"content-length: %d\r\n" % content_length)
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
