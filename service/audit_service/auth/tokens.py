"""JWT bearer tokens: verifying them (HS256, RS256, ES256) and minting them for `audit-service token`.

Claims: `sub` (the caller, compared with an event's actor.id), `tenant`, `admin` (bool), plus the
registered `iss`, `aud`, `exp` (required) and `iat`/`nbf`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from audit_client.validation import TENANT_PATTERN
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..config import AuthConfig
from ..errors import ConfigError, UnauthenticatedError

LEEWAY_SECONDS = 30
"""Clock skew tolerated on exp, nbf and iat."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller."""

    subject: str
    tenant: str
    admin: bool


def _algorithm_for(key: object, setting: str) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise ConfigError(setting, f"ES256 needs a P-256 key, got {key.curve.name}")
        return "ES256"
    raise ConfigError(setting, f"unsupported key type {type(key).__name__}; use RSA (RS256) or P-256 (ES256)")


def _read_pem(path: str, setting: str, *, private: bool) -> Any:
    try:
        data = Path(path).read_bytes()
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(setting, f"cannot load a PEM {'private' if private else 'public'} key: {error}") from None


class TokenVerifier:
    """Checks bearer tokens against the configured key; build once at start-up (raises ConfigError)."""

    def __init__(self, config: AuthConfig) -> None:
        self._issuer = config.issuer
        self._audience = config.audience
        if config.jwt_secret:
            self._key: Any = config.jwt_secret
            self._algorithm = "HS256"
        elif config.jwt_public_key_file:
            self._key = _read_pem(config.jwt_public_key_file, "AUDIT_AUTH_JWT_PUBLIC_KEY_FILE", private=False)
            self._algorithm = _algorithm_for(self._key, "AUDIT_AUTH_JWT_PUBLIC_KEY_FILE")
        else:
            raise ConfigError("AUDIT_AUTH_JWT_SECRET", "no key to verify tokens with")

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def verify(self, token: str) -> Principal:
        """The caller a token names.

        Raises:
            UnauthenticatedError: bad signature, wrong algorithm, issuer or audience, expired, or bad claims.
        """
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],  # exactly one: no algorithm confusion
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("the bearer token has expired") from None
        except jwt.InvalidTokenError as error:
            raise UnauthenticatedError(f"invalid bearer token: {error}") from None
        subject, tenant, admin = claims.get("sub"), claims.get("tenant"), claims.get("admin", False)
        if not isinstance(subject, str) or not subject:
            raise UnauthenticatedError("invalid bearer token: sub must be a non-empty string")
        if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
            raise UnauthenticatedError("invalid bearer token: tenant claim missing or malformed")
        if not isinstance(admin, bool):
            raise UnauthenticatedError("invalid bearer token: admin must be true or false")
        return Principal(subject=subject, tenant=tenant, admin=admin)


def mint_token(config: AuthConfig, *, subject: str, tenant: str, admin: bool, ttl_seconds: int) -> str:
    """A signed token for `subject` in `tenant`, valid for `ttl_seconds` (HS256 with the secret, or RS256 /
    ES256 with AUDIT_AUTH_JWT_PRIVATE_KEY_FILE)."""
    if config.jwt_secret:
        key: Any = config.jwt_secret
        algorithm = "HS256"
    elif config.jwt_private_key_file:
        key = _read_pem(config.jwt_private_key_file, "AUDIT_AUTH_JWT_PRIVATE_KEY_FILE", private=True)
        algorithm = _algorithm_for(key, "AUDIT_AUTH_JWT_PRIVATE_KEY_FILE")
    else:
        raise ConfigError(
            "AUDIT_AUTH_JWT_SECRET", "set it, or AUDIT_AUTH_JWT_PRIVATE_KEY_FILE for RS256/ES256, to mint tokens"
        )
    now = int(time.time())
    claims = {
        "iss": config.issuer,
        "aud": config.audience,
        "sub": subject,
        "tenant": tenant,
        "admin": admin,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, key, algorithm=algorithm)
