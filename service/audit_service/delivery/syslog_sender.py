"""Writes octet-counted RFC 5424 messages to a syslog receiver over TLS (RFC 5425), on one kept connection.

RFC 5425 is syslog over TLS only: plain TCP would carry the audit log in clear text, so there is no such mode.
The server's certificate is verified against a given CA (or the system's CAs) and the name the operator gave,
with TLS 1.2 at least.

How far "at least once" goes: syslog over TLS has no application-level acknowledgement. A message counts as
sent when its bytes were handed to TLS and drain() returned, which says they left this process's buffers,
not that the receiver wrote them anywhere. Messages still in flight when the connection breaks are lost unless
the caller sends them again: the destinations' engine checkpoints only after send() returned, so a crash or a
broken connection after a write and before the checkpoint sends the batch again (receivers see a duplicate,
de-duplicated by event_id in the structured data), but a receiver that drops the connection right after
taking bytes into its socket can lose them. To narrow that window (the classic failure of syslog over TCP), the
sender looks for the end of the connection before every write (a receiver that shut down sent its FIN or TLS
close_notify, which the event loop has taken in) and reconnects before writing rather than after losing the
batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

from ..core.destination_urls import AddressPolicy
from ..errors import DeliveryError, InvalidArgumentError
from .address_guard import Resolver, checked_addresses, resolve


def tls_context(ca_pem: str | None) -> ssl.SSLContext:
    """Verifies the server against ca_pem (PEM text), or the system's CAs when None; TLS 1.2 or later."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class SyslogSender:
    """A syslog-over-TLS connection to one receiver; reconnects on the next send after a failure.

    Args:
        host: the receiver's host name or address (resolved and checked by the SSRF guard at each connect).
        port: its port (6514 is syslog over TLS's).
        policy: the address guard's settings.
        ca_pem: the CA certificates (PEM) to verify the receiver with; None for the system's.
        server_name: the name its certificate must have, sent as SNI; host by default.
        connect_timeout: seconds to resolve, connect and finish the TLS handshake.
        write_timeout: seconds for a batch's bytes to drain.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        policy: AddressPolicy,
        ca_pem: str | None = None,
        server_name: str | None = None,
        connect_timeout: float = 10.0,
        write_timeout: float = 30.0,
        resolver: Resolver = resolve,
    ) -> None:
        self._host = host
        self._port = port
        self._policy = policy
        self._context = tls_context(ca_pem)
        self._server_name = server_name or host
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._resolver = resolver
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self.connections = 0
        """How many connections were opened (a reconnect adds one)."""

    @property
    def _where(self) -> str:
        return f"syslog {self._host}:{self._port}"

    async def send(self, frames: Sequence[bytes]) -> None:
        """Writes the frames (core/delivery_formats.octet_counted) in order, as one write.

        Raises:
            DeliveryError: retryable when connecting, the handshake or the write failed or timed out (the
                connection is dropped; the next send opens a new one, and the caller sends these frames again);
                not retryable when the guard refuses the receiver's address.
        """
        async with self._lock:
            writer = await self._connected()
            try:
                writer.write(b"".join(frames))
                async with asyncio.timeout(self._write_timeout):
                    await writer.drain()
            except TimeoutError:
                await self._drop()
                raise DeliveryError(True, f"{self._where}: timed out writing") from None
            except (OSError, ssl.SSLError) as error:
                await self._drop()
                raise DeliveryError(True, f"{self._where}: the connection failed ({error})") from None

    async def _connected(self) -> asyncio.StreamWriter:
        await asyncio.sleep(0)  # let the loop take in an end of stream that has arrived
        if self._writer is not None and not self._alive():
            await self._drop()
        if self._writer is None:
            self._reader, self._writer = await self._connect()
            self.connections += 1
        return self._writer

    def _alive(self) -> bool:
        assert self._reader is not None and self._writer is not None
        # A syslog receiver sends nothing, so the reader holds nothing until the end of the stream.
        return not (self._writer.is_closing() or self._reader.at_eof() or self._reader.exception() is not None)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self._connect_timeout):
                addresses = await checked_addresses(
                    self._host, self._port, policy=self._policy, field="host", resolver=self._resolver
                )
                last_error: OSError | None = None
                for address in addresses:
                    try:
                        return await asyncio.open_connection(
                            str(address), self._port, ssl=self._context, server_hostname=self._server_name
                        )
                    except OSError as error:  # ssl.SSLError too: a certificate can be fixed while the engine retries
                        last_error = error
                assert last_error is not None
                raise last_error
        except InvalidArgumentError as error:
            raise DeliveryError(False, f"{self._where}: {error}") from None
        except TimeoutError:
            raise DeliveryError(True, f"{self._where}: timed out connecting") from None
        except OSError as error:
            raise DeliveryError(True, f"{self._where}: could not connect ({error})") from None

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def aclose(self) -> None:
        """Closes the connection (TLS close_notify, then FIN)."""
        async with self._lock:
            await self._drop()
