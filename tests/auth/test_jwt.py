"""Claims to a principal (``tidings.auth.jwt``), without a server.

Tokens over HTTP, against real server processes: ``tests/web/test_security_auth.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tidings.auth.jwt import principal_from_claims
from tidings.errors import NotAuthorized


@pytest.mark.parametrize(
    "dates",
    [
        {"exp": 10**400},
        {"exp": float("inf")},
        {"exp": 1e300},
        {"exp": "2000000000"},
        {"exp": True},
        {"nbf": 10**400},
        {"iat": float("nan")},
    ],
    ids=repr,
)
def test_principal_from_claims_refuses_dates_that_are_not_numbers_of_seconds(
    dates: dict[str, Any],
) -> None:
    with pytest.raises(NotAuthorized) as refused:
        principal_from_claims({"sub": "alice", **dates})
    assert (refused.value.status, refused.value.code) == (401, "invalid_token")


def test_principal_from_claims_keeps_a_real_expiry() -> None:
    assert principal_from_claims({"sub": "a", "exp": 2_000_000_000}).expires_at == 2e9
    assert principal_from_claims({"sub": "a", "exp": 2e9, "iat": 1, "nbf": 1.5}).expires_at == 2e9
