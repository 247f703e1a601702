"""The SSRF guard's settings from the configuration, and the check a destination's address gets when it is saved
(delivery checks again at every connection: delivery/address_guard.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from audit.v1 import destinations_pb2 as pb

from ..config import Config, parse_grpc_address
from ..core.destination_urls import AddressPolicy, IPAddress, check_addresses, check_url
from ..core.destinations import kind_of, syslog_address
from .address_guard import resolve

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_SECONDS = 2.0


def _url_port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def address_policy(config: Config) -> AddressPolicy:
    """AUDIT_DESTINATIONS_ALLOW_PRIVATE, and the ports of this service and its dependencies (gRPC, metrics,
    PostgreSQL, NATS): a destination may never point at them on this host."""
    ports = {parse_grpc_address(config.api.grpc_address)[1], _url_port(config.database.url) or 5432}
    ports.update(_url_port(url) or 4222 for url in config.nats.url.split(","))
    if config.telemetry.metrics_address:
        ports.add(parse_grpc_address(config.telemetry.metrics_address, "AUDIT_METRICS_ADDRESS")[1])
    ports.discard(0)
    return AddressPolicy(
        allow_private=config.delivery.allow_private, own_ports=frozenset(ports), own_addresses=host_addresses()
    )


def host_addresses() -> frozenset[IPAddress]:
    """This host's addresses as its name resolves (in a container: its pod or network address), besides loopback;
    empty when the name does not resolve."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return frozenset()
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    return frozenset(address for address in addresses if not address.is_loopback)


def target_of(destination: pb.Destination) -> tuple[str, int, str]:
    """(host, port, field) a destination connects to."""
    kind = kind_of(destination)
    field = f"destination.{kind}"
    if kind == "syslog":
        host, port = syslog_address(destination.syslog.address, f"{field}.address")
        return host, port, f"{field}.address"
    checked = check_url(getattr(destination, kind).url, f"{field}.url")
    return checked.host, checked.port, f"{field}.url"


async def check_destination_address(destination: pb.Destination, policy: AddressPolicy) -> None:
    """Refuses (InvalidArgumentError naming the field) a destination whose host is, or resolves to, an address
    the policy refuses. A name that does not resolve now is accepted: delivery checks it at every connection
    (and shows the failure in the destination's status)."""
    host, port, field = target_of(destination)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            addresses = await resolve(host, port)
    except (OSError, TimeoutError, socket.gaierror) as error:
        log.info(
            "destination %s: %s does not resolve now (%s); checked again at delivery", destination.name, host, error
        )
        return
    check_addresses(addresses, port=port, policy=policy, field=field)
