"""A griffe extension for the docs site: Sphinx roles in docstrings as plain code.

tidings' docstrings name other objects with Sphinx roles (:class:`~tidings.Hub`), which
Markdown would show literally. This turns each into code showing the name as Sphinx
would: the last part after a ``~``, the whole target otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite the roles in every docstring before it is parsed."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
