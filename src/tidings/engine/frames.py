"""Reading and framing the bytes in a connection's queue."""

from __future__ import annotations

__all__ = ["chunk", "seq_of_frame"]


def chunk(frame: bytes) -> bytes:
    """``frame`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def seq_of_frame(frame: bytes) -> int:
    """The seq of an event frame (``id: <epoch>-<seq>\\n...``, possibly as an HTTP chunk);
    0 for anything else (comments, the opening bytes, a gap)."""
    start = 0
    if not frame.startswith(b"id: "):
        start = frame.find(b"\r\n") + 2
        if start == 1 or not frame.startswith(b"id: ", start):
            return 0
    line = frame[start + 4 : frame.index(b"\n", start)]
    _, _, seq = line.rpartition(b"-")
    return int(seq) if seq.isdigit() else 0
