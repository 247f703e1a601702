"""Opaque keyset page tokens, bound to the query they came from. Pure."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from ..errors import InvalidArgumentError

_VERSION = 1
_MAX_POSITION = 2**63 - 1  # positions are PostgreSQL bigints


@dataclass(frozen=True, slots=True)
class PageToken:
    after_position: int
    """Keyset cursor: the position of the last event of the previous page."""
    query_digest: str
    """Digest of the filter and order the token belongs to."""


def query_digest(*parts: bytes) -> str:
    """A short digest identifying a query (its serialized filter, order...)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.hexdigest()[:24]


def encode_page_token(token: PageToken) -> str:
    document = {"v": _VERSION, "p": token.after_position, "q": token.query_digest}
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_page_token(text: str, expected_digest: str) -> PageToken:
    """Parses a token and checks that it belongs to the query being run.

    Raises:
        InvalidArgumentError: naming page_token, when malformed or from another query.
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        document = json.loads(raw)
        version, position, digest = document["v"], document["p"], document["q"]
    except (binascii.Error, ValueError, TypeError, KeyError, RecursionError):
        raise InvalidArgumentError("page_token", "is malformed; pass next_page_token back unchanged") from None
    if (
        version != _VERSION
        or type(position) is not int
        or not 0 <= position <= _MAX_POSITION
        or not isinstance(digest, str)
    ):
        raise InvalidArgumentError("page_token", "is malformed; pass next_page_token back unchanged")
    if digest != expected_digest:
        raise InvalidArgumentError("page_token", "belongs to a different filter, order or caller")
    return PageToken(after_position=position, query_digest=digest)
