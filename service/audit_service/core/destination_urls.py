"""Destination URLs without I/O (placeholder until the SSRF guard lands)."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import InvalidArgumentError

MAX_URL_BYTES = 2048


def check_url(url: str, field: str, *, schemes: tuple[str, ...] = ("https", "http")) -> None:
    if not url:
        raise InvalidArgumentError(field, "is required")
    if len(url.encode()) > MAX_URL_BYTES:
        raise InvalidArgumentError(field, f"longer than {MAX_URL_BYTES} bytes")
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise InvalidArgumentError(field, f"must be an {' or '.join(schemes)} URL with a host")
