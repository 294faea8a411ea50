"""``tidings token``: its errors are one line (a minted token against a hub is in
``tests/web/test_security_auth.py``)."""

from __future__ import annotations

import pytest

from tests.conftest import run_main
from tests.web._security import SECRET


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("--sub", "alice"), {}, "TIDINGS_JWT_SECRET"),
        (("--sub", "alice", "--jwt-secret", "short"), {}, "--jwt-secret"),
        (("--sub", "alice", "--ttl", "soon"), {"TIDINGS_JWT_SECRET": SECRET}, "--ttl"),
        (("--sub", "alice", "--subscribe", "a b"), {"TIDINGS_JWT_SECRET": SECRET}, "'a b'"),
        (("--sub", ""), {"TIDINGS_JWT_SECRET": SECRET}, "--sub"),
        (("--sub", "alice", "--ttl", "1e300"), {"TIDINGS_JWT_SECRET": SECRET}, "--ttl"),
        (("--sub", "alice", "--ttl", "inf"), {"TIDINGS_JWT_SECRET": SECRET}, "--ttl"),
        (("--sub", "alice", "--ttl", "3651d"), {"TIDINGS_JWT_SECRET": SECRET}, "--ttl"),
        (("--sub", "alice", "--audience", ""), {"TIDINGS_JWT_SECRET": SECRET}, "--audience"),
        (("--sub", "alice"), {"TIDINGS_JWT_SECRET": SECRET, "TIDINGS_JWT_ISSUER": ""}, "--issuer"),
    ],
)
def test_tidings_token_errors_are_one_line(
    args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    result = run_main("token", *args, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tidings: ")
    assert needle in lines[0]
