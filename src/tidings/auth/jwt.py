"""JWT verification (HS256 with a secret, RS256/ES256 with a public key) into a Principal.

Only the algorithms that fit the configured key are accepted, so ``alg: none`` and the
HS/RS confusion attack (an HS256 token signed with the public key as secret) are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt

from tidings.auth.principal import Principal
from tidings.errors import ConfigError, NotAuthorized
from tidings.topics import validate_pattern

__all__ = ["JWTVerifier"]


class JWTVerifier:
    """Verifies tokens and maps their claims to a :class:`Principal`.

    Claims: ``sub`` (the user id), and ``tidings: {subscribe: [patterns], publish:
    [patterns], admin: bool}``; ``exp`` and ``nbf`` are checked when present.
    """

    def __init__(self, *, secret: str | None = None, public_key: str | None = None) -> None:
        if secret is not None:
            self._key: Any = secret
            self._algorithms = ["HS256"]
        elif public_key is not None:
            text = public_key
            if "-----BEGIN" not in text:
                path = Path(public_key)
                if not path.is_file():
                    raise ConfigError("invalid --jwt-public-key: neither PEM text nor a file")
                text = path.read_text()
            try:
                self._key = jwt.algorithms.get_default_algorithms()["RS256"].prepare_key(text)
                self._algorithms = ["RS256"]
            except (ValueError, TypeError, jwt.InvalidKeyError):
                try:
                    self._key = jwt.algorithms.get_default_algorithms()["ES256"].prepare_key(text)
                    self._algorithms = ["ES256"]
                except (ValueError, TypeError, jwt.InvalidKeyError) as exc:
                    raise ConfigError(
                        "invalid --jwt-public-key: not an RSA or EC public key"
                    ) from exc
        else:
            raise ConfigError("a JWT secret or public key is required")

    def verify(self, token: str) -> Principal:
        """The principal of ``token``.

        Raises:
            NotAuthorized: (401) the token is malformed, expired, not yet valid, signed
                with another key or algorithm, or its claims are malformed.
        """
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                options={"require": ["sub"], "verify_aud": False},
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthorized("token expired", code="token_expired", status=401) from None
        except jwt.PyJWTError:
            raise NotAuthorized("invalid token", code="invalid_token", status=401) from None
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Map verified claims to a principal; malformed claims are a 401."""
    sub = claims.get("sub")
    grants = claims.get("tidings", {})
    if not isinstance(sub, str) or not sub or not isinstance(grants, dict):
        raise NotAuthorized("invalid token claims", code="invalid_token", status=401)
    try:
        subscribe = tuple(validate_pattern(p) for p in _strings(grants.get("subscribe", [])))
        publish = tuple(validate_pattern(p) for p in _strings(grants.get("publish", [])))
    except Exception:
        raise NotAuthorized("invalid token claims", code="invalid_token", status=401) from None
    exp = claims.get("exp")
    return Principal(
        user=sub,
        subscribe=subscribe,
        publish=publish,
        admin=grants.get("admin") is True,
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return value
