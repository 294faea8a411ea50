"""The docs stay true to the code."""

from __future__ import annotations

from pathlib import Path

from tidings.config import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_configuration_doc_lists_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        assert f"| `{flag}` | `TIDINGS_{name.upper()}` |" in text, flag


def test_cli_doc_lists_every_command() -> None:
    from tidings.cli import build_parser

    text = (DOCS / "cli.md").read_text()
    commands = next(
        action.choices
        for action in build_parser()._actions
        if isinstance(action.choices, dict) and "serve" in action.choices
    )
    for name in commands:
        assert f"| `tidings {name}" in text, name
