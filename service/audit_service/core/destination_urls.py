"""Which URLs and addresses a destination or webhook may be sent to: the pure half of the SSRF guard.

A destination's URL is chosen by a tenant's administrator, but the request leaves from the service's own
network, next to its database, its metrics port and, in a cloud, the instance metadata service that hands out
credentials. So:

  * check_url refuses what is not a plain http(s) URL: other schemes, user:password@ (credentials belong in
    headers, which are kept secret; a URL is logged and shown), no host, a bad port, more than 2048 bytes, and
    IPv4 hosts written in forms other than a.b.c.d (2852039166, 0xa9fea9fe, 0251.0376.0251.0376), which
    resolvers accept but which only serve to hide an address from a reader. http:// is allowed: some
    receivers sit behind a TLS-terminating proxy on the same host, and a webhook's body is signed anyway; the
    events then cross the network unencrypted, which the operator chooses by writing http.
  * check_addresses refuses the addresses a host resolves to that nothing outside should reach: link-local
    (169.254.0.0/16 and fe80::/10, where the metadata services live, 169.254.169.254 among them), the other
    known metadata addresses (AWS's IPv6 fd00:ec2::254, Alibaba's 100.100.100.200), unspecified, multicast and
    reserved addresses, and, unless the operator allows private addresses, loopback and every other
    non-global address (RFC 1918, unique local, shared, documentation). Even then, the service's own ports on
    loopback stay refused, so a destination cannot call the service's own APIs. IPv4-mapped and NAT64 IPv6
    addresses (::ffff:169.254.169.254, 64:ff9b::a9fe:a9fe) are judged by the IPv4 address they carry.

Resolving is the adapter's job (delivery/address_guard.py), which checks every address a name resolves to
and connects to the address it checked, so a DNS answer that changes between the check and the connection
(DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

from ..errors import InvalidArgumentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_BYTES = 2048
MAX_HOST_BYTES = 253
DEFAULT_PORTS = {"https": 443, "http": 80}

_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("fd00:ec2::254"),  # AWS instance metadata over IPv6 (a unique local address)
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata (in the shared 100.64.0.0/10)
    }
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.0.0.0 to this host


@dataclass(frozen=True, slots=True)
class DestinationUrl:
    """A checked URL: its scheme, host (lowercase, IPv6 without brackets) and port (the default one filled)."""

    url: str
    scheme: str
    host: str
    port: int

    @property
    def host_address(self) -> IPAddress | None:
        """The host when it is an IP address literal, else None (a name to resolve)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """The operator's settings of the guard."""

    allow_private: bool = False
    """Allow loopback and private addresses (a receiver on the same host or network; the tests' receivers)."""
    own_ports: frozenset[int] = frozenset()
    """The service's own listening ports, refused on loopback and on own_addresses even when private addresses
    are allowed."""
    own_addresses: frozenset[IPAddress] = frozenset()
    """This host's own addresses besides loopback (its LAN or pod address): with one of own_ports, the service
    itself."""


def _non_standard_ipv4(host: str) -> bool:
    """A host that resolvers read as an IPv4 address but that is not written a.b.c.d (decimal, hex, octal,
    fewer parts)."""
    try:
        socket.inet_aton(host)  # the BSD parser getaddrinfo uses: pure computation, no lookup
    except OSError:
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


def _dns_name_problem(host: str) -> str | None:
    """Why a host name can never be looked up, or None. The resolver encodes names with the idna codec (labels of
    1 to 63 bytes) and httpx encodes non-ASCII ones with IDNA 2008 (no emoji): both raise UnicodeError, not
    OSError, so a name they refuse must be refused when saved rather than break every delivery."""
    try:
        encoded = host.encode("idna")
        if not host.isascii():
            idna.encode(host)
    except UnicodeError:
        return "the host is not a valid DNS name (labels of 1 to 63 bytes, IDNA 2008)"
    if len(encoded.removesuffix(b".")) > MAX_HOST_BYTES:
        return f"the host is longer than {MAX_HOST_BYTES} bytes"
    return None


def check_url(url: str, field: str) -> DestinationUrl:
    """Checks a destination URL; raises InvalidArgumentError(field, reason) when it may not be used."""
    if len(url.encode()) > MAX_URL_BYTES:
        raise InvalidArgumentError(field, f"a URL may be at most {MAX_URL_BYTES} bytes")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidArgumentError(field, "a URL may not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidArgumentError(field, f"not a valid URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidArgumentError(field, "the URL must be https:// (or http://)")
    if "@" in parts.netloc:
        raise InvalidArgumentError(field, "a URL may not carry a user or password; put credentials in headers")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidArgumentError(field, "the URL has no host")
    if port == 0:
        raise InvalidArgumentError(field, "the port must be 1..65535")
    if "%" in host:
        raise InvalidArgumentError(field, "an IPv6 zone (%...) is not allowed in a destination URL")
    if parts.netloc.startswith("[") or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidArgumentError(field, "the host is not a valid IPv6 address") from None
    elif _non_standard_ipv4(host):
        raise InvalidArgumentError(field, "write an IPv4 host as four decimal numbers (a.b.c.d)")
    elif (problem := _dns_name_problem(host)) is not None:
        raise InvalidArgumentError(field, problem)
    return DestinationUrl(url=url, scheme=scheme, host=host, port=port or DEFAULT_PORTS[scheme])


def _judged_address(address: IPAddress) -> IPAddress:
    """The address as the network will treat it: the IPv4 address inside an IPv4-mapped or NAT64 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal(address: IPAddress, *, port: int, policy: AddressPolicy) -> str | None:
    """Why the guard refuses to connect to address:port, or None when it may."""
    judged = _judged_address(address)
    if judged in _METADATA_ADDRESSES:
        return "a cloud metadata service address"
    if judged.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if judged.is_unspecified or judged in _THIS_NETWORK:
        return "the unspecified address (this host)"
    if judged.is_multicast:
        return "a multicast address"
    if port in policy.own_ports and (judged.is_loopback or judged in policy.own_addresses):
        return "this service's own port"
    if judged.is_loopback:
        pass
    elif judged.is_reserved:  # ::1 is in the reserved ::/8 too, hence after loopback
        return "a reserved address"
    if not judged.is_global and not policy.allow_private:
        return "a loopback or private address (allowed only with private destinations allowed)"
    return None


def check_addresses(
    addresses: Iterable[IPAddress | str],
    *,
    port: int,
    policy: AddressPolicy,
    field: str,
) -> list[IPAddress]:
    """Checks every address a destination's host resolved to (all of them: a client may pick any).

    Returns:
        The addresses, parsed, in the order given.

    Raises:
        InvalidArgumentError(field, reason): one of them is refused, or there are none.
    """
    checked = []
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0] if isinstance(raw, str) else raw)
        if (reason := refusal(address, port=port, policy=policy)) is not None:
            raise InvalidArgumentError(field, f"the destination's address {address} is refused: {reason}")
        checked.append(address)
    if not checked:
        raise InvalidArgumentError(field, "the destination's host has no address")
    return checked
