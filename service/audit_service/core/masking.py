"""Masking of secret-looking values in an event's metadata and states, before the event is hashed and stored.
Pure.

A key is secret-looking when the rule (a regular expression) is found in the key folded to lower case with
'-', '_', '.' and spaces removed: "apiKey", "api-key" and "API_KEY" all fold to "apikey". The whole value under
such a key is replaced, whatever its type, at any depth (also inside lists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SECRET_KEYS = (
    r"password|passwd|passphrase|secret|token|apikey|accesskey|privatekey|credential|authorization|cookie"
)
"""Found in a folded key, it marks the key's value as a secret (AUDIT_SECRET_KEYS overrides it)."""
MASK = "[MASKED]"
"""What a masked value is stored as."""

_FOLDED_OUT = str.maketrans("", "", "-_. ")
_MAX_REMEMBERED_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class SecretMask:
    """Replaces the values of secret-looking keys."""

    rule: re.Pattern[str] = re.compile(DEFAULT_SECRET_KEYS, re.IGNORECASE)
    _verdicts: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    """Keys seen so far and whether they are secret: the same few keys come back in event after event."""

    def is_secret(self, key: str) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            if len(self._verdicts) >= _MAX_REMEMBERED_KEYS:
                self._verdicts.clear()
            verdict = self._verdicts[key] = self.rule.search(key.lower().translate(_FOLDED_OUT)) is not None
        return verdict

    def mask(self, value: Any) -> Any:
        """The value with every secret-looking key's value masked (the same object when nothing is).

        Runs on every event's metadata and states (core/decode.py): a dict is copied only when something in it
        changes, and only dicts and lists are descended into.
        """
        if isinstance(value, dict):
            verdicts = self._verdicts
            masked = None
            for key, item in value.items():
                secret = verdicts.get(key)
                if secret is None:
                    secret = self.is_secret(key)
                if secret:
                    new = MASK
                elif isinstance(item, dict | list):
                    new = self.mask(item)
                else:
                    continue
                if new is not item:
                    if masked is None:
                        masked = dict(value)
                    masked[key] = new
            return value if masked is None else masked
        if isinstance(value, list):
            items = [self.mask(item) if isinstance(item, dict | list) else item for item in value]
            return items if any(new is not old for new, old in zip(items, value, strict=True)) else value
        return value


DEFAULT_MASK = SecretMask()
"""The default rule (shared, so its memo of keys is too)."""


def compile_secret_keys(rule: str) -> SecretMask:
    """A mask from a rule; raises re.error when the rule is not a regular expression."""
    return SecretMask(re.compile(rule, re.IGNORECASE))
