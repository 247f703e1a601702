"""Opaque keyset page tokens, bound to the query they came from. Pure."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
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


_MALFORMED = "is malformed; pass next_page_token back unchanged"


def _encode(document: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode(text: str, cursor_key: str, expected_digest: str, *, mismatch: str, field: str, malformed: str) -> object:
    """The cursor of a token of this version whose digest is `expected_digest`.

    Raises:
        InvalidArgumentError: naming `field`, when malformed or issued for another query (`mismatch` says which).
    """
    try:
        document = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        version, cursor, digest = document["v"], document[cursor_key], document["q"]
    except (binascii.Error, ValueError, TypeError, KeyError, RecursionError):
        raise InvalidArgumentError(field, malformed) from None
    if version != _VERSION or not isinstance(digest, str):
        raise InvalidArgumentError(field, malformed)
    if digest != expected_digest:
        raise InvalidArgumentError(field, mismatch)
    return cursor


def encode_page_token(token: PageToken) -> str:
    return _encode({"v": _VERSION, "p": token.after_position, "q": token.query_digest})


def decode_page_token(
    text: str,
    expected_digest: str,
    *,
    mismatch: str = "belongs to a different filter, order or caller",
    field: str = "page_token",
    malformed: str = _MALFORMED,
) -> PageToken:
    """Parses a token and checks that it belongs to the query being run.

    Args:
        field: the request field the token came in (a stream's cursor is one too), named by the errors.
        malformed: the error's detail when the token cannot be parsed.

    Raises:
        InvalidArgumentError: naming `field`, when malformed or from another query.
    """
    position = _decode(text, "p", expected_digest, mismatch=mismatch, field=field, malformed=malformed)
    if type(position) is not int or not 0 <= position <= _MAX_POSITION:
        raise InvalidArgumentError(field, malformed)
    return PageToken(after_position=position, query_digest=expected_digest)


def encode_id_token(after_id: str, query_digest: str) -> str:
    """A token whose keyset cursor is a UUID (the last row of the previous page)."""
    return _encode({"v": _VERSION, "a": after_id, "q": query_digest})


def decode_id_token(text: str, expected_digest: str, *, mismatch: str) -> str:
    """The UUID a page starts after (canonical form).

    Raises:
        InvalidArgumentError: naming page_token, when malformed or from another query.
    """
    after_id = _decode(text, "a", expected_digest, mismatch=mismatch, field="page_token", malformed=_MALFORMED)
    try:
        return str(uuid.UUID(after_id))  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgumentError("page_token", _MALFORMED) from None


def encode_name_token(after_name: str, query_digest: str) -> str:
    """A token whose keyset cursor is a name (the last row of the previous page, in name order)."""
    return _encode({"v": _VERSION, "n": after_name, "q": query_digest})


def decode_name_token(text: str, expected_digest: str, *, mismatch: str) -> str:
    """The name a page starts after.

    Raises:
        InvalidArgumentError: naming page_token, when malformed or from another query.
    """
    after_name = _decode(text, "n", expected_digest, mismatch=mismatch, field="page_token", malformed=_MALFORMED)
    if type(after_name) is not str or not 0 < len(after_name) <= 255 or not _storable(after_name):
        raise InvalidArgumentError("page_token", _MALFORMED)
    return after_name


def _storable(text: str) -> bool:
    """Whether PostgreSQL can take the text as a query argument: no NUL, no lone surrogate (a token is only base64
    JSON, so its cursor can be anything a client writes)."""
    return "\x00" not in text and not any(0xD800 <= ord(char) <= 0xDFFF for char in text)
