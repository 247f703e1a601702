"""SecretMask.mask's fast path (descends only into dicts and lists, copies a dict only when something in it
changes, reads the verdict memo directly, the memo cleared at _MAX_REMEMBERED_KEYS keys) attacked: against the
straightforward definition on generated JSON values, the input never changed, the same object back when nothing
is masked, and verdicts unchanged across the memo's clearing, whose size stays bounded whatever keys producers
send."""

from __future__ import annotations

import copy
import re
from typing import Any

from audit_service.core.masking import _MAX_REMEMBERED_KEYS, MASK, SecretMask, compile_secret_keys
from hypothesis import given
from hypothesis import strategies as st

_FOLDED_OUT = str.maketrans("", "", "-_. ")


def reference(rule: re.Pattern[str], value: Any) -> Any:
    """The definition (core/masking.py's docstring), with no memo and no shortcut: every key folded and looked up,
    every value visited; the same object back when nothing under it is masked."""
    if isinstance(value, dict):
        masked = {
            key: MASK if rule.search(key.lower().translate(_FOLDED_OUT)) else reference(rule, item)
            for key, item in value.items()
        }
        changed = any(masked[key] is not item for key, item in value.items())
        return masked if changed else value
    if isinstance(value, list):
        items = [reference(rule, item) for item in value]
        return items if any(new is not old for new, old in zip(items, value, strict=True)) else value
    return value


KEYS = st.one_of(
    st.sampled_from(
        ["password", "db_password", "API-KEY", "apiKey", "x.Auth.Token", "set_cookie", "Secret ", "name", "key", "id"]
    ),
    st.sampled_from(["pass", "word", "api", "-", "_", ".", " ", "TOKEN", "é", "🔑", "Kelvin"]).map(str),
    st.text(max_size=8),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=6), st.just(MASK))
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=5)),
    max_leaves=30,
)


@given(JSON)
def test_mask_is_the_definition_and_never_changes_its_input(value: Any) -> None:
    mask = SecretMask()
    before = copy.deepcopy(value)
    expected = reference(mask.rule, value)
    for _ in range(2):  # the second time every verdict comes from the memo
        masked = mask.mask(value)
        assert masked == expected
        assert value == before, "the input was changed"
        assert (masked is value) == (expected is value), "the same object back exactly when nothing is masked"


@given(st.lists(st.tuples(KEYS, JSON), min_size=1, max_size=6), st.data())
def test_a_custom_rule_with_its_own_memo_masks_by_the_same_definition(pairs: list[tuple[str, Any]], data) -> None:
    """A custom rule (AUDIT_SECRET_KEYS) with its own memo: same definition."""
    mask = compile_secret_keys(data.draw(st.sampled_from([r"^ssn$|pin", r"key$", r"t"])))
    value = {"outer": [dict(pairs), [dict(pairs)]], **dict(pairs)}
    assert mask.mask(value) == reference(mask.rule, value)


def test_verdicts_stay_right_across_the_memo_being_cleared_and_the_memo_stays_bounded() -> None:
    """A producer sending ever new keys (ids as keys, say) fills the memo again and again: it is cleared each
    time, and every verdict, before and after, is the rule's."""
    mask = SecretMask()
    rule = mask.rule
    secret_every = 7
    for start in range(0, 3 * _MAX_REMEMBERED_KEYS + 500, 250):
        keys = [f"k{n}-token" if n % secret_every == 0 else f"k{n}" for n in range(start, start + 250)]
        value = {"batch": [{key: {"v": n, "password": n}} for n, key in enumerate(keys)], "apiKey": 1, "name": 2}
        assert mask.mask(value) == reference(rule, value), f"keys from {start}"
        assert len(mask._verdicts) <= _MAX_REMEMBERED_KEYS
    # The keys remembered last are still answered right from the memo.
    assert mask.mask({"password": 1, "name": 2, "k0-token": 3, "k1": 4}) == {
        "password": MASK,
        "name": 2,
        "k0-token": MASK,
        "k1": 4,
    }


def test_a_secret_inside_lists_of_lists_of_dicts_is_masked_and_the_unchanged_siblings_are_shared() -> None:
    untouched = {"a": [1.0, {"b": "c"}]}
    value = {"rows": [[untouched, {"credentials": {"user": "u"}}]], "plain": untouched}
    masked = SecretMask().mask(value)
    assert masked == {"rows": [[untouched, {"credentials": MASK}]], "plain": untouched}
    assert masked["rows"][0][0] is untouched and masked["plain"] is untouched, "what did not change is not copied"
    assert value["rows"][0][1] == {"credentials": {"user": "u"}}
