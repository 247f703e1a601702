"""The resolving half of the SSRF guard (core/destination_urls.py decides; this looks names up and connects).

Checking a URL's host once, when a destination is saved, is not enough: its DNS answer can change afterwards,
or between a check and the connection that follows it (DNS rebinding: a short TTL, first a public address, then
169.254.169.254). So the senders resolve the host themselves at every new connection, check every address of
the answer, and connect to one of those checked addresses, never to the name again:

  * SyslogSender connects with asyncio.open_connection(address, ..., server_hostname=name);
  * HttpSender's client connects through GuardedBackend, an httpcore network backend. httpcore asks its backend
    for a TCP stream to (host, port) and then runs TLS over that stream itself with the URL's host as
    server_hostname, so the Host header, SNI and the certificate's hostname check all stay those of the URL,
    and connection pooling stays keyed by the URL's origin, while the socket goes to the checked address.
    (Rewriting the URL to the address and sending the name in Host and the sni_hostname extension works too,
    but then the pool is keyed by address, and two names behind one address could share a TLS connection that
    was verified for only one of them.)
"""

from __future__ import annotations

import asyncio
import socket
import typing
from collections.abc import Awaitable, Callable

import httpcore

from ..core.destination_urls import AddressPolicy, IPAddress, check_addresses

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Looks a host up: the addresses (as text) a TCP connection to host:port may go to."""


async def resolve(host: str, port: int) -> list[str]:
    """The system resolver (getaddrinfo, in a thread): every address of the answer, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(
    host: str, port: int, *, policy: AddressPolicy, field: str, resolver: Resolver = resolve
) -> list[IPAddress]:
    """Resolves host and checks every address (core/destination_urls.check_addresses).

    Raises:
        InvalidArgumentError: an address is refused.
        OSError: the name does not resolve (socket.gaierror); that may pass.
    """
    return check_addresses(await resolver(host, port), port=port, policy=policy, field=field)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked addresses of the host it is asked for.

    A refused address raises InvalidArgumentError out of the request (httpx passes on errors that are not
    httpcore's); a name that does not resolve is a ConnectError, a resolution that takes longer than the
    connect timeout a ConnectTimeout, like any other failed connection.
    """

    def __init__(self, policy: AddressPolicy, *, resolver: Resolver = resolve, field: str = "url") -> None:
        self._policy = policy
        self._resolver = resolver
        self._field = field
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await checked_addresses(
                    host, port, policy=self._policy, field=self._field, resolver=self._resolver
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except (OSError, UnicodeError) as error:  # UnicodeError: a name the idna codec cannot encode
            raise httpcore.ConnectError(
                f"{host} does not resolve: {getattr(error, 'strerror', None) or error}"
            ) from None
        last_error: Exception | None = None
        for address in addresses:  # in the resolver's order, as a plain connect would try them
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None  # checked_addresses returns at least one address
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("destinations are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
