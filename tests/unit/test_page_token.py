"""Keyset page tokens: opaque, bound to their query, refused when malformed."""

from __future__ import annotations

import base64
import json

import pytest
from audit_service.core.page_token import PageToken, decode_page_token, encode_page_token, query_digest
from audit_service.errors import InvalidArgumentError

DIGEST = query_digest(b"filter", b"\x01")


def _token(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


@pytest.mark.parametrize("position", [0, 1, 42, 2**31, 2**63 - 1])
def test_round_trip(position: int) -> None:
    token = PageToken(after_position=position, query_digest=DIGEST)
    text = encode_page_token(token)
    assert decode_page_token(text, DIGEST) == token


def test_token_is_url_safe_and_unpadded() -> None:
    for position in range(1, 300, 7):  # various lengths, so that padding would be needed for some
        text = encode_page_token(PageToken(position, DIGEST))
        assert "=" not in text
        assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert decode_page_token(text, DIGEST).after_position == position


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("!!!!", id="not base64"),
        pytest.param("abc", id="bad padding"),
        pytest.param("é", id="non-ascii"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(), id="not utf-8"),
        pytest.param(base64.urlsafe_b64encode(b"not json").decode(), id="not json"),
        pytest.param(_token([1, 2, 3]), id="json list"),
        pytest.param(_token("text"), id="json string"),
        pytest.param(_token(7), id="json number"),
        pytest.param(_token({"v": 1, "p": 5}), id="no digest"),
        pytest.param(_token({"v": 1, "q": DIGEST}), id="no position"),
        pytest.param(_token({"p": 5, "q": DIGEST}), id="no version"),
        pytest.param(_token({"v": 2, "p": 5, "q": DIGEST}), id="other version"),
        pytest.param(_token({"v": 1, "p": -1, "q": DIGEST}), id="negative position"),
        pytest.param(_token({"v": 1, "p": "5", "q": DIGEST}), id="position as string"),
        pytest.param(_token({"v": 1, "p": 5.5, "q": DIGEST}), id="fractional position"),
        pytest.param(_token({"v": 1, "p": None, "q": DIGEST}), id="null position"),
        pytest.param(_token({"v": 1, "p": 5, "q": 12}), id="digest not a string"),
    ],
)
def test_malformed_token_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        decode_page_token(text, DIGEST)
    assert caught.value.field == "page_token"
    assert "malformed" in str(caught.value)


def test_position_beyond_bigint_is_refused() -> None:
    """Positions are PostgreSQL bigints: a tampered token with a larger one must be INVALID_ARGUMENT, not reach
    the query (where asyncpg fails to encode it and the client gets INTERNAL)."""
    with pytest.raises(InvalidArgumentError) as caught:
        decode_page_token(_token({"v": 1, "p": 2**63, "q": DIGEST}), DIGEST)
    assert caught.value.field == "page_token"


def test_token_of_another_query_is_refused() -> None:
    text = encode_page_token(PageToken(10, DIGEST))
    with pytest.raises(InvalidArgumentError) as caught:
        decode_page_token(text, query_digest(b"other filter", b"\x01"))
    assert caught.value.field == "page_token"
    assert "different filter, order or caller" in str(caught.value)


def test_query_digest() -> None:
    digest = query_digest(b"filter", b"\x01")
    assert len(digest) == 24
    int(digest, 16)
    assert digest == query_digest(b"filter", b"\x01")
    assert digest != query_digest(b"filter", b"\x00")
    assert digest != query_digest(b"other", b"\x01")
    assert digest != query_digest(b"\x01", b"filter")
    assert digest != query_digest(b"filter")
    # parts are length-prefixed: moving the boundary between parts changes the digest
    assert query_digest(b"ab", b"c") != query_digest(b"a", b"bc")
    assert query_digest(b"", b"x") != query_digest(b"x", b"")
    assert query_digest() != query_digest(b"")
