"""The SSRF guard's decisions: which URLs a destination may have and which addresses it may connect to."""

from __future__ import annotations

import ipaddress

import pytest
from audit_service.core.destination_urls import AddressPolicy, check_addresses, check_url
from audit_service.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port"),
    [
        ("https://siem.example.com/ingest?token=x", "https", "siem.example.com", 443),
        ("http://receiver.example.com:8080/hook", "http", "receiver.example.com", 8080),
        ("HTTPS://Splunk.Example.COM:8088/services/collector/event", "https", "splunk.example.com", 8088),
        ("https://[2001:db8::1]:8443/", "https", "2001:db8::1", 8443),
        ("https://93.184.216.34/", "https", "93.184.216.34", 443),
    ],
)
def test_plain_http_and_https_urls_are_accepted(url: str, scheme: str, host: str, port: int) -> None:
    checked = check_url(url, "url")
    assert (checked.scheme, checked.host, checked.port, checked.url) == (scheme, host, port, url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/", "https://"),
        ("file:///etc/passwd", "https://"),
        ("gopher://127.0.0.1:6379/", "https://"),
        ("example.com/hook", "https://"),
        ("https://user:secret@example.com/", "user or password"),
        ("https://@example.com/", "user or password"),
        ("https:///path", "no host"),
        ("https://example.com:0/", "port"),
        ("https://example.com:65536/", "not a valid URL"),
        ("https://example.com:https/", "not a valid URL"),
        ("https://example.com/" + "a" * 2030, "2048 bytes"),
        ("https://example.com/" + "é" * 1015, "2048 bytes"),
        ("https://example.com/a b", "whitespace"),
        ("https://example.com/\r\nHost: evil", "whitespace"),
        ("http://2852039166/", "a.b.c.d"),  # 169.254.169.254 as one decimal number
        ("http://0xa9fea9fe/", "a.b.c.d"),
        ("http://0251.0376.0251.0376/", "a.b.c.d"),  # octal
        ("http://169.254.43518/", "a.b.c.d"),
        ("http://127.1/", "a.b.c.d"),
        ("https://[fe80::1%25eth0]/", "zone"),
        ("https://[not-an-address]/", "IPv6"),
    ],
)
def test_other_urls_are_refused_with_the_field_and_a_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidArgumentError, match=reason) as raised:
        check_url(url, "destination.http.url")
    assert raised.value.field == "destination.http.url"


def test_a_url_of_exactly_2048_bytes_is_accepted() -> None:
    url = "https://example.com/" + "a" * (2048 - len("https://example.com/"))
    assert check_url(url, "url").host == "example.com"


def check(
    addresses: list[str],
    *,
    port: int = 443,
    allow_private: bool = False,
    own_ports=frozenset({50051}),
    own_addresses=frozenset(),
):
    policy = AddressPolicy(allow_private=allow_private, own_ports=own_ports, own_addresses=own_addresses)
    return check_addresses(addresses, port=port, policy=policy, field="url")


def test_the_services_own_port_on_its_own_lan_address_is_refused_even_with_private_allowed() -> None:
    own = frozenset({ipaddress.ip_address("10.1.2.3")})
    with pytest.raises(InvalidArgumentError, match="own port"):
        check(["10.1.2.3"], port=50051, allow_private=True, own_addresses=own)
    assert check(["10.1.2.3"], port=8080, allow_private=True, own_addresses=own)  # another port of the host
    assert check(["10.1.2.4"], port=50051, allow_private=True, own_addresses=own)  # another host


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure metadata
        "169.254.0.1",
        "fe80::1",
        "fe80::a9fe:a9fe",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "fd00:ec2::254",  # AWS metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "240.0.0.1",
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_metadata_link_local_unspecified_multicast_and_reserved_are_always_refused(
    address: str, allow_private: bool
) -> None:
    with pytest.raises(InvalidArgumentError, match="refused") as raised:
        check([address], allow_private=allow_private)
    assert raised.value.field == "url"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "::ffff:127.0.0.1",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "fd12::1",
        "100.64.0.1",
        "192.0.2.10",
        "::ffff:10.1.2.3",
    ],
)
def test_loopback_and_private_addresses_need_the_operators_permission(address: str) -> None:
    with pytest.raises(InvalidArgumentError, match="private"):
        check([address])
    assert check([address], allow_private=True) == [ipaddress.ip_address(address)]


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_the_services_own_ports_on_loopback_stay_refused_even_with_private_allowed(address: str) -> None:
    with pytest.raises(InvalidArgumentError, match="own port"):
        check([address], port=50051, allow_private=True)
    assert check([address], port=8080, allow_private=True)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert check([address]) == [ipaddress.ip_address(address)]


def test_every_address_of_an_answer_is_checked_not_only_the_first() -> None:
    with pytest.raises(InvalidArgumentError, match=r"169\.254\.169\.254"):
        check(["93.184.216.34", "169.254.169.254"])


def test_an_answer_without_addresses_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="no address"):
        check([])
