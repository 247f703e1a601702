"""Masking of secret-looking values at ingest (pure): the default rule, key folding, depth, a custom rule."""

from __future__ import annotations

import time

import pytest
from audit_service.config import load_config
from audit_service.core.decode import decode_event
from audit_service.core.masking import DEFAULT_SECRET_KEYS, MASK, SecretMask, compile_secret_keys
from audit_service.core.records import CHANGE_AFTER_INDEX, CHANGE_BEFORE_INDEX, METADATA_INDEX
from audit_service.errors import ConfigError

from ..factories import make_event, stamp


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "Password",
        "apiKey",
        "API-KEY",
        "api_key",
        "api.key",
        "x-api-key",
        "token",
        "accessToken",
        "refresh_token",
        "client_secret",
        "SECRET",
        "private_key",
        "privateKey",
        "passwd",
        "passphrase",
        "aws credentials",
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "set_cookie",
        "accessKey",
        "aws_access_key_id",
    ],
)
def test_secret_looking_keys(key: str) -> None:
    assert SecretMask().is_secret(key)
    assert SecretMask().mask({key: "hunter2"}) == {key: MASK}


@pytest.mark.parametrize("key", ["name", "user", "api", "key", "public_key", "keyId", "pass", "bypass_ok"])
def test_other_keys(key: str) -> None:
    assert not SecretMask().is_secret(key)


def test_the_whole_value_is_masked_at_any_depth_also_in_lists() -> None:
    state = {
        "db": {"host": "db-1", "password": "hunter2"},
        "apiKey": {"id": "k1", "value": "abc"},
        "users": [{"name": "a", "token": "t1"}, {"name": "b", "tokens": ["t2", "t3"]}, "plain"],
        "matrix": [[{"secret": 1.0}]],
        "credentials": None,
    }
    assert SecretMask().mask(state) == {
        "db": {"host": "db-1", "password": MASK},
        "apiKey": MASK,
        "users": [{"name": "a", "token": MASK}, {"name": "b", "tokens": MASK}, "plain"],
        "matrix": [[{"secret": MASK}]],
        "credentials": MASK,
    }
    assert state["db"]["password"] == "hunter2"  # the input is not changed


def test_nothing_to_mask_gives_the_same_object() -> None:
    state = {"a": [1.0, {"b": "c"}], "d": None}
    assert SecretMask().mask(state) is state


def test_decoded_events_carry_masked_metadata_and_states() -> None:
    event = stamp(make_event())
    event.metadata.update({"apiKey": "abc", "request": {"headers": {"Authorization-Token": "bearer xyz"}}})
    event.change.before.update({"db": {"password": "old"}})
    event.change.after.update({"db": {"password": "hunter2", "host": "db-1"}})
    limits = load_config(env={}).ingest.limits
    content = decode_event(event.SerializeToString(), None, now_seconds=time.time(), limits=limits).content
    assert content[METADATA_INDEX]["apiKey"] == MASK
    assert content[METADATA_INDEX]["request"]["headers"]["Authorization-Token"] == MASK
    assert content[CHANGE_BEFORE_INDEX]["db"] == {"password": MASK}
    assert content[CHANGE_AFTER_INDEX]["db"] == {"password": MASK, "host": "db-1"}
    assert "hunter2" not in repr(content) and "abc" not in repr(content)


def test_a_custom_rule_from_the_environment() -> None:
    mask = load_config(env={"AUDIT_SECRET_KEYS": r"^ssn$|pin"}).ingest.mask
    assert mask.mask({"SSN": "123", "ssn_hint": "x", "pinCode": 1.0, "password": "kept"}) == {
        "SSN": MASK,
        "ssn_hint": "x",
        "pinCode": MASK,
        "password": "kept",
    }


def test_the_default_rule_applies_when_unset_or_empty() -> None:
    for env in ({}, {"AUDIT_SECRET_KEYS": ""}):
        assert load_config(env=env).ingest.mask.rule.pattern == DEFAULT_SECRET_KEYS


def test_a_bad_rule_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(env={"AUDIT_SECRET_KEYS": "pass(word"})
    assert error.value.setting == "AUDIT_SECRET_KEYS"
    assert "AUDIT_SECRET_KEYS" in str(error.value)


def test_compile_secret_keys_ignores_case() -> None:
    assert compile_secret_keys("pin").is_secret("PIN_CODE")
