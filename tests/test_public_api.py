"""The package's public names are exactly its ``__all__``."""

from __future__ import annotations

import inspect

import tidings


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(tidings).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(tidings.__all__) == public | {"__version__"}


def test_all_is_sorted() -> None:
    assert tidings.__all__ == sorted(tidings.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for name in tidings.__all__:
        if name == "__version__":
            continue
        assert inspect.getdoc(getattr(tidings, name)), name
