"""The client side of an HTTP/1.1 event stream, for raw sockets (``bench``, ``testing``).

Both read streams without an HTTP client library: the bench because a client must cost
less than the server it measures, the test kit because a test needs to control the socket
itself (a small receive buffer, a reader that stops, an abrupt close). Only what an event
stream needs: the request line, the response head, and a chunked (or plain) body.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["ChunkedDecoder", "parse_head", "stream_request"]


def stream_request(
    path: str,
    *,
    host: str,
    topics: tuple[str, ...] = (),
    last_event_id: str | None = None,
    token: str | None = None,
) -> bytes:
    """A ``GET`` request for an event stream at ``path`` (already quoted)."""
    query = "&".join("topic=" + quote(topic, safe="") for topic in topics)
    lines = [
        f"GET {path}{'?' + query if query else ''} HTTP/1.1",
        f"Host: {host}",
        "Accept: text/event-stream",
    ]
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers (lower-case names) of a response head, without its blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


class ChunkedDecoder:
    """Decodes a chunked body (RFC 9112 §7.1) as its bytes arrive, in pieces of any size.

    :meth:`feed` returns the body bytes the piece completes; :attr:`done` turns true at the
    last (empty) chunk. Chunk extensions and trailers are ignored.

    Raises:
        ValueError: from :meth:`feed`, for a chunk size that is not hexadecimal.
    """

    __slots__ = ("_left", "_raw", "done")

    def __init__(self) -> None:
        self._raw = bytearray()
        self._left = 0  # bytes left in the current chunk, its closing CRLF included
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The body bytes that ``data`` completes."""
        raw = self._raw
        raw += data
        out = bytearray()
        pos = 0
        while not self.done:
            if self._left:
                take = min(self._left, len(raw) - pos)
                if take <= 0:
                    break
                data_left = self._left - 2  # the chunk's closing CRLF is not body
                if data_left > 0:
                    out += raw[pos : pos + min(take, data_left)]
                self._left -= take
                pos += take
                continue
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(raw[pos:eol]).split(b";")[0].strip() or b"0", 16)
            pos = eol + 2
            if size == 0:
                self.done = True
                break
            self._left = size + 2
        del raw[:pos]
        return bytes(out)
