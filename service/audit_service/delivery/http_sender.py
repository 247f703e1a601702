"""POSTs a destination's batch or a webhook to its URL, behind the SSRF guard (delivery/address_guard.py).

One HttpSender (one httpx.AsyncClient, one connection pool keyed by origin) serves every destination of the
process. Redirects are not followed (a redirect could lead anywhere, past the URL that was checked), proxies
from the environment are not used (the guard checks the connection it makes), and a receiver's answer is read
up to a bound and otherwise ignored: only its status matters.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from types import TracebackType

import httpcore
import httpx

from ..core.destination_urls import AddressPolicy, DestinationUrl, check_url
from ..errors import DeliveryError, InvalidArgumentError
from .address_guard import GuardedBackend, Resolver, resolve

RETRYABLE_STATUSES = frozenset({408, 429})
"""4xx answers that say "later" rather than "no"; every 5xx is retryable too."""


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request mapping and exception mapping) over a pool that connects through
    GuardedBackend. httpx does not take a network backend, so the pool it made is replaced by an equal one that
    has it; tests/integration/test_delivery_http.py fails if a request ever connects around the guard."""

    def __init__(self, backend: GuardedBackend, *, verify: ssl.SSLContext | bool, limits: httpx.Limits) -> None:
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def _origin(target: DestinationUrl) -> str:
    """The URL as reasons name it: scheme, host and port only (a path or query may hold a token)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.scheme}://{host}:{target.port}"


class HttpSender:
    """Sends POST requests to destination URLs.

    Args:
        policy: the address guard's settings.
        connect_timeout: seconds to resolve and connect (TLS included).
        timeout: seconds for the whole request, from connecting to the end of the answer's bounded read.
        max_response_bytes: how much of an answer is read (then the connection is dropped, not reused).
        verify: the SSLContext that verifies receivers (ssl.create_default_context(cafile=...)); None for the
            system's CAs. There is no way to turn verification off.
        resolver: how hosts are looked up (the system resolver; tests pass their own).
    """

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        max_response_bytes: int = 64 * 1024,
        verify: ssl.SSLContext | None = None,
        resolver: Resolver = resolve,
        max_connections: int = 100,
    ) -> None:
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(
                GuardedBackend(policy, resolver=resolver), verify=verify or True, limits=limits
            ),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
            trust_env=False,
        )

    async def __aenter__(self) -> HttpSender:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POSTs body to url; returns the status when the receiver answered 2xx.

        Raises:
            DeliveryError: retryable for timeouts, connections refused, dropped or not resolved, 408, 429 and
                5xx; not retryable for any other answer (3xx included: redirects are not followed), a URL that
                check_url refuses or an address the guard refuses. Whether to retry is the caller's choice:
                the destinations' engine retries a streaming batch whatever the error (its events must get
                through, in order), while a webhook gives up on the ones that are not retryable.
        """
        try:
            target = check_url(url, "url")
        except InvalidArgumentError as error:
            raise DeliveryError(False, str(error)) from None
        origin = _origin(target)
        try:
            async with asyncio.timeout(self._timeout):
                status = await self._post(url, body, headers)
        except InvalidArgumentError as error:  # the guard refused an address
            raise DeliveryError(False, f"POST {origin}: {error}") from None
        except (TimeoutError, httpx.TimeoutException) as error:
            raise DeliveryError(True, f"POST {origin}: {_timeout_phase(error)}") from None
        except httpx.ConnectError as error:  # an OS or resolver message: addresses, never request data
            raise DeliveryError(True, f"POST {origin}: could not connect ({error})") from None
        except httpx.TransportError as error:
            # Not str(error): a protocol error can quote what was being sent, a header value included.
            raise DeliveryError(True, f"POST {origin}: the connection failed ({type(error).__name__})") from None
        if 200 <= status < 300:
            return status
        retryable = status >= 500 or status in RETRYABLE_STATUSES
        raise DeliveryError(retryable, f"POST {origin}: the receiver answered {status}", status)

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        async with self._client.stream("POST", url, content=body, headers=dict(headers)) as response:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > self._max_response_bytes:
                    break  # leaving the block unread closes the connection instead of pooling it
            return response.status_code


def _timeout_phase(error: BaseException) -> str:
    if isinstance(error, httpx.ConnectTimeout):
        return "timed out connecting"
    if isinstance(error, httpx.WriteTimeout):
        return "timed out sending"
    if isinstance(error, httpx.PoolTimeout):
        return "timed out waiting for a free connection"
    return "timed out waiting for the answer"
