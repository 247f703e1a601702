"""What every paged call shares: the AIP-158 page size, and the caller's identity its page tokens are bound to."""

from __future__ import annotations

from typing import Protocol

from ..auth.tokens import Principal
from ..errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class PagedRequest(Protocol):
    page_size: int


def page_size_of(request: PagedRequest) -> int:
    """AIP-158: 0 means the default, larger than the maximum is coerced to it, negative is an error."""
    if request.page_size < 0:
        raise InvalidArgumentError("page_size", f"must not be negative, got {request.page_size}")
    return min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def caller_identity(caller: Principal | None) -> bytes:
    """Who a page token was issued to: reusing it as someone else is refused."""
    if caller is None:
        return b"*"
    return f"{caller.tenant}\x00{caller.subject}\x00{int(caller.admin)}".encode()
