"""The server's logging: one line per record, levels from ``--log-level``, tokens redacted.

Access lines (``tidings.access``) hold request URLs, and a stream's token may be in its
query (``?token=``, SPEC §5): :class:`RedactTokens` removes tokens from every record
before any handler writes it, and the trace level logs no request contents at all.
"""

from __future__ import annotations

import logging
import re
import sys
from urllib.parse import unquote_plus

__all__ = ["RedactTokens", "configure_logging"]

#: ``--log-level trace`` is the most detailed level: Python's DEBUG.
_LEVELS = {"trace": logging.DEBUG}

# A query parameter whose name decodes to "token" (``token=``, ``%74oken=``, ``TOKEN=`` is
# another name and not a token), its value running to the next separator.
_QUERY_PARAM = re.compile(r"(?P<sep>^|[?&;\s'\"])(?P<name>[^=&?;\s'\"]+)=(?P<value>[^&;\s'\"]*)")
# The Authorization header and the token cookie, as a debug log may show them.
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_COOKIE = re.compile(r"(tidings_token=)[^;\s'\"]*")


def _redact(text: str) -> str:
    def query(match: re.Match[str]) -> str:
        if unquote_plus(match["name"]) != "token":
            return match[0]
        return f"{match['sep']}{match['name']}=[redacted]"

    text = _QUERY_PARAM.sub(query, text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _COOKIE.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Removes tokens from log records: access logs (and debug logs) never hold them.

    Redacted: a ``token`` query parameter however encoded, a bearer token, the
    ``tidings_token`` cookie, in the message and in every argument. Arguments keep their
    places; one that is not a string or a number is replaced by its redacted text when it
    held a token.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}
        return True


def _redact_arg(arg: object) -> object:
    if isinstance(arg, int | float) or arg is None:
        return arg
    text = str(arg)
    redacted = _redact(text)
    return arg if redacted == text else redacted


def configure_logging(level: str) -> None:
    """Log ``tidings.*`` records at ``level`` and above to stderr, one line each.

    Records of other libraries (redis-py, asyncio) go to the same handler from WARNING.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    number = _LEVELS.get(level, logging.getLevelName(level.upper()))
    logging.getLogger("tidings").setLevel(number if isinstance(number, int) else logging.INFO)
