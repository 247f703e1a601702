"""load_config: defaults, parsing, one ConfigError naming each bad variable, explicit overrides."""

from __future__ import annotations

import pytest
from audit_client.validation import Limits
from audit_service.config import (
    ApiConfig,
    Config,
    DatabaseConfig,
    NatsConfig,
    TailConfig,
    TlsConfig,
    load_config,
    parse_grpc_address,
)
from audit_service.errors import ConfigError


def test_defaults() -> None:
    config = load_config(env={})
    assert config == Config()
    assert config.database.url == ""
    assert config.database.migrate_url == ""
    assert config.database.pool_max_size == 10
    assert config.nats.url == "nats://127.0.0.1:4222"
    assert config.nats.servers == ["nats://127.0.0.1:4222"]
    assert config.nats.subject_prefix == "audit"
    assert config.nats.events_stream == "AUDIT_EVENTS"
    assert config.nats.dead_stream == "AUDIT_DEAD"
    assert config.nats.events_subject_prefix == "audit.events"
    assert config.nats.dead_subject_prefix == "audit.dead"
    assert config.nats.alerts_stream == "AUDIT_ALERTS"
    assert config.nats.alerts_subject_prefix == "audit.alerts"
    assert config.nats.alerts_max_age_seconds == 7 * 24 * 3600
    assert config.ingest.durable == "audit-ingest"
    assert config.ingest.batch_size == 500
    assert config.ingest.limits == Limits()
    assert config.api.grpc_address == "0.0.0.0:50051"
    assert config.api.query_timeout_seconds == 30.0
    assert config.api.max_response_bytes == 4 * 1024 * 1024
    assert config.log_level == "INFO"


def test_environment_is_read() -> None:
    env = {
        "AUDIT_DATABASE_URL": "postgresql://app@db/audit",
        "AUDIT_DATABASE_POOL_MAX_SIZE": "3",
        "AUDIT_NATS_URL": "nats://a:4222, tls://b:4222",
        "AUDIT_SUBJECT_PREFIX": "acme.audit",
        "AUDIT_STREAM_PREFIX": "ACME",
        "AUDIT_DUPLICATE_WINDOW_SECONDS": "30.5",
        "AUDIT_ALERTS_MAX_AGE_SECONDS": "3600",
        "AUDIT_INGEST_DURABLE": "workers",
        "AUDIT_INGEST_BATCH_SIZE": "42",
        "AUDIT_INGEST_ACK_WAIT_SECONDS": "12",
        "AUDIT_MAX_EVENT_BYTES": "1000",
        "AUDIT_MAX_CLOCK_SKEW_SECONDS": "60",
        "AUDIT_GRPC_ADDRESS": "[::1]:0",
        "AUDIT_SHUTDOWN_GRACE_SECONDS": "2",
        "AUDIT_QUERY_TIMEOUT_SECONDS": "7.5",
        "AUDIT_MAX_RESPONSE_BYTES": "65536",
        "AUDIT_TAIL_BUFFER_EVENTS": "500",
        "AUDIT_TAIL_BUFFER_BYTES": "1000000",
        "AUDIT_TAIL_HEARTBEAT_SECONDS": "2.5",
        "AUDIT_TAIL_CHECKPOINT_SECONDS": "0.5",
        "AUDIT_TAIL_POLL_SECONDS": "3",
        "AUDIT_LOG_LEVEL": "debug",
    }
    config = load_config(env=env)
    assert config.database == DatabaseConfig(
        url="postgresql://app@db/audit", migrate_url="postgresql://app@db/audit", pool_max_size=3
    )
    assert config.nats.servers == ["nats://a:4222", "tls://b:4222"]
    assert config.nats.events_subject_prefix == "acme.audit.events"
    assert config.nats.events_stream == "ACME_EVENTS"
    assert config.nats.duplicate_window_seconds == 30.5
    assert (config.nats.alerts_stream, config.nats.alerts_subject_prefix) == ("ACME_ALERTS", "acme.audit.alerts")
    assert config.nats.alerts_max_age_seconds == 3600.0
    assert config.ingest.durable == "workers"
    assert config.ingest.batch_size == 42
    assert config.ingest.ack_wait_seconds == 12.0
    assert config.ingest.limits.max_event_bytes == 1000
    assert config.ingest.limits.max_clock_skew_seconds == 60
    assert config.ingest.limits.max_message_chars == Limits().max_message_chars
    assert config.api == ApiConfig(
        grpc_address="[::1]:0", shutdown_grace_seconds=2.0, query_timeout_seconds=7.5, max_response_bytes=65536
    )
    assert config.tail == TailConfig(
        buffer_events=500, buffer_bytes=1_000_000, heartbeat_seconds=2.5, checkpoint_seconds=0.5, poll_seconds=3
    )
    assert config.nats.committed_subject_prefix == "acme.audit.committed"
    assert config.log_level == "DEBUG"


def test_the_http_port_is_off_unless_an_address_is_set() -> None:
    assert not Config().http.enabled
    assert not load_config(env={"AUDIT_HTTP_ADDRESS": " "}).http.enabled
    config = load_config(env={"AUDIT_HTTP_ADDRESS": "[::]:8080"})
    assert (config.http.enabled, config.http.address) == (True, "[::]:8080")


def test_migrate_url_is_its_own_when_set() -> None:
    config = load_config(
        env={"AUDIT_DATABASE_URL": "postgres://app@db/a", "AUDIT_MIGRATE_DATABASE_URL": "postgresql://owner@db/a"}
    )
    assert config.database.url == "postgres://app@db/a"
    assert config.database.migrate_url == "postgresql://owner@db/a"


def test_empty_variables_mean_default() -> None:
    env = {name: "" for name in ("AUDIT_INGEST_BATCH_SIZE", "AUDIT_NATS_URL", "AUDIT_LOG_LEVEL", "AUDIT_GRPC_ADDRESS")}
    assert load_config(env=env) == Config()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUDIT_GRPC_ADDRESS", "nope"),
        ("AUDIT_GRPC_ADDRESS", "localhost:"),
        ("AUDIT_GRPC_ADDRESS", ":50051"),
        ("AUDIT_GRPC_ADDRESS", "localhost:65536"),
        ("AUDIT_GRPC_ADDRESS", "localhost:http"),
        ("AUDIT_HTTP_ADDRESS", "8080"),
        ("AUDIT_HTTP_ADDRESS", "localhost:70000"),
        ("AUDIT_INGEST_BATCH_SIZE", "0"),
        ("AUDIT_INGEST_BATCH_SIZE", "-5"),
        ("AUDIT_INGEST_BATCH_SIZE", "x"),
        ("AUDIT_INGEST_BATCH_SIZE", "1.5"),
        ("AUDIT_DATABASE_POOL_MAX_SIZE", "0"),
        ("AUDIT_MAX_EVENT_BYTES", "lots"),
        ("AUDIT_MAX_CLOCK_SKEW_SECONDS", "0"),
        ("AUDIT_INGEST_FETCH_TIMEOUT_SECONDS", "0"),
        ("AUDIT_INGEST_ACK_WAIT_SECONDS", "-1"),
        ("AUDIT_SHUTDOWN_GRACE_SECONDS", "soon"),
        ("AUDIT_QUERY_TIMEOUT_SECONDS", "0"),
        ("AUDIT_MAX_RESPONSE_BYTES", "4MB"),
        ("AUDIT_MAX_RESPONSE_BYTES", "1024"),
        ("AUDIT_DUPLICATE_WINDOW_SECONDS", "nan"),
        ("AUDIT_DATABASE_URL", "mysql://x"),
        ("AUDIT_DATABASE_URL", "db.example.com/audit"),
        ("AUDIT_MIGRATE_DATABASE_URL", "sqlite:///audit.db"),
        ("AUDIT_NATS_URL", "http://x"),
        ("AUDIT_NATS_URL", "nats://a:4222,http://b"),
        ("AUDIT_NATS_URL", "nats://"),
        ("AUDIT_LOG_LEVEL", "LOUD"),
        ("AUDIT_LOG_LEVEL", "CRITICAL"),
        ("AUDIT_SUBJECT_PREFIX", "a b"),
        ("AUDIT_SUBJECT_PREFIX", "audit."),
        ("AUDIT_SUBJECT_PREFIX", "audit.*"),
        ("AUDIT_STREAM_PREFIX", "AUDIT.X"),
        ("AUDIT_INGEST_DURABLE", "a b"),
        ("AUDIT_TAIL_BUFFER_EVENTS", "0"),
        ("AUDIT_TAIL_BUFFER_BYTES", "64MiB"),
        ("AUDIT_TAIL_HEARTBEAT_SECONDS", "never"),
        ("AUDIT_TAIL_CHECKPOINT_SECONDS", "-1"),
        ("AUDIT_TAIL_POLL_SECONDS", "0"),
    ],
)
def test_bad_variable_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={name: value})
    assert caught.value.setting == name
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_checkpoint_verify_keys_are_a_comma_separated_list_of_readable_files(tmp_path) -> None:
    old, new = tmp_path / "old.pub.pem", tmp_path / "new.pub.pem"
    old.write_text("old")
    new.write_text("new")
    assert load_config(env={}).checkpoints.verify_key_files == ()

    one = load_config(env={"AUDIT_CHECKPOINT_VERIFY_KEY_FILE": str(old)})
    assert one.checkpoints.verify_key_files == (str(old),)
    several = load_config(env={"AUDIT_CHECKPOINT_VERIFY_KEY_FILE": f"{old}, {new},"})
    assert several.checkpoints.verify_key_files == (str(old), str(new))

    with pytest.raises(ConfigError) as caught:
        load_config(env={"AUDIT_CHECKPOINT_VERIFY_KEY_FILE": f"{old},{tmp_path / 'missing.pem'}"})
    assert caught.value.setting == "AUDIT_CHECKPOINT_VERIFY_KEY_FILE"
    assert "missing.pem" in str(caught.value) and "\n" not in str(caught.value)


def test_explicit_override_wins_over_environment() -> None:
    env = {"AUDIT_LOG_LEVEL": "DEBUG", "AUDIT_NATS_URL": "nats://env:4222", "AUDIT_GRPC_ADDRESS": "127.0.0.1:1"}
    config = load_config(
        env=env, log_level="ERROR", nats=NatsConfig(url="nats://explicit:4222"), api=ApiConfig("127.0.0.1:2")
    )
    assert config.log_level == "ERROR"
    assert config.nats.url == "nats://explicit:4222"
    assert config.api.grpc_address == "127.0.0.1:2"
    assert load_config(env=env).log_level == "DEBUG"


def test_override_of_an_unknown_field_is_an_error() -> None:
    with pytest.raises(TypeError):
        load_config(env={}, no_such_setting=1)


def test_require_database() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}).require_database()
    assert caught.value.setting == "AUDIT_DATABASE_URL"
    config = load_config(env={"AUDIT_DATABASE_URL": "postgresql://app@db/audit"})
    assert config.require_database() is config


def test_parse_grpc_address() -> None:
    assert parse_grpc_address("0.0.0.0:50051") == ("0.0.0.0", 50051)
    assert parse_grpc_address("[::]:0") == ("[::]", 0)
    with pytest.raises(ConfigError) as caught:
        parse_grpc_address("nope", "--grpc-address")
    assert caught.value.setting == "--grpc-address"


def test_nats_credentials_name_the_inboxes_and_never_show_in_errors() -> None:
    nats = load_config(env={"AUDIT_NATS_URL": "nats://ingest:s3cret@nats:4222"}).nats
    assert nats.servers == ["nats://ingest:s3cret@nats:4222"]
    assert nats.inbox_prefix == "_INBOX.ingest"
    assert nats.redacted_url == "nats://ingest:***@nats:4222"
    assert load_config(env={}).nats.inbox_prefix == "_INBOX"
    for url, message in (
        ("http://ingest:s3cret@nats:4222", "expected nats://[user:password@]host:port"),
        ("nats://in.gest:s3cret@nats:4222", "NATS user 'in.gest' must match"),
    ):
        with pytest.raises(ConfigError, match="AUDIT_NATS_URL") as raised:
            load_config(env={"AUDIT_NATS_URL": url})
        assert message in str(raised.value) and "s3cret" not in str(raised.value)


def test_tls_files_are_read_in_pairs(tmp_path) -> None:
    cert, key, ca = (tmp_path / name for name in ("server.crt", "server.key", "ca.crt"))
    for path in (cert, key, ca):
        path.write_text("PEM")
    config = load_config(
        env={
            "AUDIT_GRPC_TLS_CERT_FILE": str(cert),
            "AUDIT_GRPC_TLS_KEY_FILE": str(key),
            "AUDIT_GRPC_TLS_CLIENT_CA_FILE": str(ca),
            "AUDIT_NATS_URL": "nats://nats:4222",
            "AUDIT_NATS_TLS_CA_FILE": str(ca),
            "AUDIT_HEALTH_CHECK_INTERVAL_SECONDS": "5",
            "AUDIT_HEALTH_CHECK_TIMEOUT_SECONDS": "0.5",
        }
    )
    assert config.api.tls == TlsConfig(cert_file=str(cert), key_file=str(key), client_ca_file=str(ca))
    assert config.api.tls.enabled
    assert (config.api.health_check_interval_seconds, config.api.health_check_timeout_seconds) == (5.0, 0.5)
    assert config.nats.tls_ca_file == str(ca) and config.nats.tls_required  # a CA file means TLS, even for nats://
    assert not load_config(env={}).api.tls.enabled and not load_config(env={}).nats.tls_required
    assert load_config(env={"AUDIT_NATS_URL": "tls://nats:4222"}).nats.tls_required

    for env, named in [
        ({"AUDIT_GRPC_TLS_CERT_FILE": str(cert)}, "AUDIT_GRPC_TLS_KEY_FILE"),
        ({"AUDIT_GRPC_TLS_KEY_FILE": str(key)}, "AUDIT_GRPC_TLS_CERT_FILE"),
        ({"AUDIT_GRPC_TLS_CLIENT_CA_FILE": str(ca)}, "AUDIT_GRPC_TLS_CLIENT_CA_FILE"),
        ({"AUDIT_GRPC_TLS_CERT_FILE": str(tmp_path / "missing"), "AUDIT_GRPC_TLS_KEY_FILE": str(key)}, "CERT_FILE"),
        ({"AUDIT_NATS_TLS_KEY_FILE": str(key)}, "AUDIT_NATS_TLS_CERT_FILE"),
        ({"AUDIT_NATS_TLS_CA_FILE": str(tmp_path / "missing")}, "AUDIT_NATS_TLS_CA_FILE"),
        ({"AUDIT_NATS_TLS_HANDSHAKE_FIRST": "maybe"}, "AUDIT_NATS_TLS_HANDSHAKE_FIRST"),
        ({"AUDIT_HEALTH_CHECK_INTERVAL_SECONDS": "0"}, "AUDIT_HEALTH_CHECK_INTERVAL_SECONDS"),
    ]:
        with pytest.raises(ConfigError) as raised:
            load_config(env=env)
        assert named in raised.value.setting, (env, raised.value)
