"""Destinations and alert rules attacked at their documented limits, without a server: every string field
exactly at its limit in bytes (with 4-byte UTF-8 where the field takes it) is accepted and one byte over is
refused naming the field; control characters, hosts no resolver can look up and header values no HTTP library
will send are refused when saved, not found out at delivery."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit.v1 import destinations_pb2 as dpb
from audit_service.config import load_config
from audit_service.core.alert_rules import validate_rule
from audit_service.core.destination_urls import check_url
from audit_service.core.destinations import validate_destination
from audit_service.core.page_token import decode_name_token, encode_name_token, query_digest
from audit_service.errors import ConfigError, InvalidArgumentError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import duration_pb2

EMOJI = "\U0001f600"  # 4 bytes of UTF-8
URL = "https://hooks.example.com/"
HEC_TOKEN = "0f9c2d38-7d4b-4e0e-9a3a-0d6b1f2c3e4d"


def _emoji_text(size: int) -> str:
    """size bytes of UTF-8, 4-byte characters first."""
    return EMOJI * (size // 4) + "a" * (size % 4)


def _refused_field(destination: dpb.Destination) -> str:
    with pytest.raises(InvalidArgumentError) as error:
        validate_destination(destination)
    return error.value.field


def _ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syslog test CA")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _padded_pem(size: int) -> str:
    """A CA certificate followed by text outside any PEM block (which PEM readers skip), size bytes in all."""
    pem = _ca_pem()
    return pem + "#" * (size - len(pem.encode()) - 1) + "\n"


def _at_and_over(build, limit: int, field: str, text=_emoji_text) -> None:
    validate_destination(build(text(limit)))
    assert _refused_field(build(text(limit + 1))) == field


def test_destination_text_fields_take_exactly_their_limit_in_bytes_and_refuse_one_more() -> None:
    _at_and_over(
        lambda value: dpb.Destination(name="d", description=value, webhook=dpb.WebhookTarget(url=URL)),
        1024,
        "destination.description",
    )
    _at_and_over(
        lambda value: dpb.Destination(name="d", webhook=dpb.WebhookTarget(url=URL + value)),
        2048 - len(URL),
        "destination.webhook.url",
    )
    _at_and_over(
        lambda value: dpb.Destination(name="d", http=dpb.HttpTarget(url=URL), query=f'action:"{value}"'),
        2048 - len('action:""'),
        "destination.query",
    )
    ascii_text = "a".__mul__
    _at_and_over(
        lambda value: dpb.Destination(name="d", webhook=dpb.WebhookTarget(url=URL), headers={"X-Token": value}),
        1024,
        "destination.headers['X-Token']",
        ascii_text,
    )
    for name in ("index", "source", "sourcetype"):
        _at_and_over(
            lambda value, name=name: dpb.Destination(
                name="d", splunk_hec=dpb.SplunkHecTarget(url=URL, **{name: value}), secret=HEC_TOKEN
            ),
            256,
            f"destination.splunk_hec.{name}",
            ascii_text,
        )
    syslog = "syslog.example.com:6514"
    _at_and_over(
        lambda value: dpb.Destination(name="d", syslog=dpb.SyslogTarget(address=syslog, app_name=value)),
        48,
        "destination.syslog.app_name",
        ascii_text,
    )
    _at_and_over(
        lambda value: dpb.Destination(name="d", syslog=dpb.SyslogTarget(address=syslog, ca_pem=value)),
        64 * 1024,
        "destination.syslog.ca_pem",
        _padded_pem,
    )
    labels = lambda size: ".".join(["a" * 63] * 3 + ["a" * (size - 3 * 64)])  # noqa: E731
    _at_and_over(
        lambda value: dpb.Destination(name="d", syslog=dpb.SyslogTarget(address=syslog, server_name=value)),
        253,
        "destination.syslog.server_name",
        labels,
    )


@pytest.mark.parametrize("character", ["\x00", "\x01", "\n", "\x7f"])
def test_control_characters_are_refused_in_every_text_field(character: str) -> None:
    syslog = "syslog.example.com:6514"
    for destination, field in [
        (dpb.Destination(name="d", description=f"a{character}b", webhook=dpb.WebhookTarget(url=URL)), "description"),
        (dpb.Destination(name=f"d{character}", webhook=dpb.WebhookTarget(url=URL)), "name"),
        (dpb.Destination(name="d", webhook=dpb.WebhookTarget(url=f"{URL}{character}")), "webhook.url"),
        (dpb.Destination(name="d", webhook=dpb.WebhookTarget(url=URL), headers={"X-A": f"v{character}"}), None),
        (
            dpb.Destination(name="d", splunk_hec=dpb.SplunkHecTarget(url=URL, index=f"i{character}"), secret="t"),
            "splunk_hec.index",
        ),
        (
            dpb.Destination(name="d", splunk_hec=dpb.SplunkHecTarget(url=URL), secret=f"t{character}"),
            "secret",
        ),
        (dpb.Destination(name="d", syslog=dpb.SyslogTarget(address=f"{syslog}{character}")), "syslog.address"),
        (
            dpb.Destination(name="d", syslog=dpb.SyslogTarget(address=syslog, app_name=f"a{character}")),
            "syslog.app_name",
        ),
        (
            dpb.Destination(name="d", syslog=dpb.SyslogTarget(address=syslog, server_name=f"s{character}")),
            "syslog.server_name",
        ),
    ]:
        refused = _refused_field(destination)
        assert refused == (f"destination.{field}" if field else "destination.headers['X-A']"), destination


@pytest.mark.parametrize(
    "host",
    [
        "a" * 64 + ".example.com",  # a label of more than 63 bytes
        "hooks..example.com",  # an empty label
        ".example.com",
        ("a" * 63 + ".") * 4 + "com",  # more than 253 bytes
        EMOJI + ".example.com",  # IDNA 2003 takes it, httpx (IDNA 2008) refuses it at every request
        "b\u00fccher" * 20 + ".example.com",  # a label of more than 63 bytes once in punycode
    ],
)
def test_a_host_no_resolver_can_look_up_is_refused_naming_the_field(host: str) -> None:
    """getaddrinfo raises UnicodeError (not OSError) for these: it escaped the save-time check as INTERNAL and,
    at delivery, the subscription's error handling (a crash loop with no attempt ever recorded)."""
    with pytest.raises(InvalidArgumentError) as error:
        check_url(f"https://{host}/hook", "destination.webhook.url")
    assert error.value.field == "destination.webhook.url"
    syslog = dpb.Destination(name="d", syslog=dpb.SyslogTarget(address=f"{host}:6514"))
    assert _refused_field(syslog) == "destination.syslog.address"


def test_a_dns_name_at_the_limits_is_accepted() -> None:
    host = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 bytes, labels of 63
    assert check_url(f"https://{host}./", "url").host == f"{host}."  # with the root's trailing dot
    assert check_url("https://b\u00fccher.example.com/", "url").host == "b\u00fccher.example.com"  # IDNA 2008
    assert check_url("https://under_score.example.com/", "url").host == "under_score.example.com"


@pytest.mark.parametrize("value", [" Bearer x", "Bearer x ", "\tBearer", " "])
def test_a_header_value_no_http_library_will_send_is_refused(value: str) -> None:
    """h11 refuses to send a field value with leading or trailing whitespace (RFC 9110 5.5): accepted, it made
    every request of the destination fail forever (LocalProtocolError) with nothing to say why."""
    destination = dpb.Destination(name="d", webhook=dpb.WebhookTarget(url=URL), headers={"X-A": value})
    assert _refused_field(destination) == "destination.headers['X-A']"


@pytest.mark.parametrize("token", [" token", "token ", "to ken "])
def test_a_hec_token_with_surrounding_spaces_is_refused(token: str) -> None:
    """The token travels as "Authorization: Splunk <token>": a trailing space is a value h11 will not send."""
    destination = dpb.Destination(name="d", splunk_hec=dpb.SplunkHecTarget(url=URL), secret=token)
    assert _refused_field(destination) == "destination.secret"


def _rule(**fields) -> rules_pb.AlertRule:
    rule = rules_pb.AlertRule(
        display_name="Repeated failed logins",
        enabled=True,
        query="action:user.login outcome:failure",
        threshold=rules_pb.AlertThreshold(count=5, window=duration_pb2.Duration(seconds=600), group_by="actor.id"),
        severity=rules_pb.ALERT_SEVERITY_HIGH,
        message_template="{actor.id} failed",
        tenant="acme",
    )
    for name, value in fields.items():
        setattr(rule, name, value)
    return rule


def test_alert_rule_text_fields_take_exactly_their_limit_in_bytes_and_refuse_one_more() -> None:
    for name, limit, build in [
        ("display_name", 200, _emoji_text),
        ("message_template", 2048, _emoji_text),
        ("query", 2048, lambda size: f'action:"{_emoji_text(size - 9)}"'),
    ]:
        validate_rule(_rule(**{name: build(limit)}))
        with pytest.raises(InvalidArgumentError) as error:
            validate_rule(_rule(**{name: build(limit + 1)}))
        assert error.value.field == f"alert_rule.{name}"
    for name in ("display_name", "query"):
        with pytest.raises(InvalidArgumentError) as error:
            validate_rule(_rule(**{name: "a\x00b" if name == "display_name" else 'action:"a\x00"'}))
        assert error.value.field == f"alert_rule.{name}"


@pytest.mark.parametrize(
    "setting", ["AUDIT_REACTOR_PAGE_EVENTS", "AUDIT_REACTOR_PUBLISH_PAGE_ALERTS", "AUDIT_WEBHOOK_MAX_ATTEMPTS"]
)
def test_a_count_no_query_can_take_is_a_start_up_error_naming_it(setting: str) -> None:
    """Above 2**63 - 1, a page size used to pass start-up and fail every query of the reactor (asyncpg cannot
    send it as a LIMIT)."""
    with pytest.raises(ConfigError) as error:
        load_config(env={"AUDIT_DATABASE_URL": "postgresql://x/y", setting: str(2**63)})
    assert error.value.setting == setting and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("AUDIT_DESTINATIONS_ALLOW_PRIVATE", "yes please"),
        ("AUDIT_WEBHOOK_MAX_ATTEMPTS", "0"),
        ("AUDIT_WEBHOOK_MAX_ATTEMPTS", "-1"),
        ("AUDIT_WEBHOOK_MAX_ATTEMPTS", "1.5"),
        ("AUDIT_DELIVERY_RETRY_BASE_SECONDS", "nan"),
        ("AUDIT_DELIVERY_RETRY_CAP_SECONDS", "inf"),
        ("AUDIT_DELIVERY_TIMEOUT_SECONDS", "0"),
        ("AUDIT_DELIVERY_POLL_SECONDS", "-0.5"),
        ("AUDIT_REACTOR_PAGE_EVENTS", "ten"),
        ("AUDIT_REACTOR_PUBLISH_PAGE_ALERTS", "0"),
    ],
)
def test_bad_delivery_and_reactor_settings_are_one_line_start_up_errors(setting: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(env={"AUDIT_DATABASE_URL": "postgresql://x/y", setting: value})
    assert error.value.setting == setting and "\n" not in str(error.value)


def test_a_name_token_decodes_and_a_forged_one_is_malformed_not_an_internal_error() -> None:
    """decode_name_token called _decode without the arguments it needs: every ListDestinations page after the
    first was INTERNAL. A token is base64 JSON anyone can write: a cursor PostgreSQL cannot take (NUL, a lone
    surrogate) must be refused as malformed too."""
    digest = query_digest(b"destinations", b"acme")
    assert decode_name_token(encode_name_token("b-hook", digest), digest, mismatch="other") == "b-hook"
    with pytest.raises(InvalidArgumentError) as error:
        decode_name_token(encode_name_token("b-hook", digest), query_digest(b"x"), mismatch="other")
    assert (error.value.field, str(error.value)) == ("page_token", "page_token: other")
    for forged in ("a\x00b", "a\ud800b"):
        document = json.dumps({"v": 1, "n": forged, "q": digest}).encode()  # ensure_ascii: \\u escapes
        token = base64.urlsafe_b64encode(document).decode().rstrip("=")
        with pytest.raises(InvalidArgumentError) as error:
            decode_name_token(token, digest, mismatch="other")
        assert error.value.field == "page_token"
