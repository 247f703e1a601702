"""The `query` string of an EventFilter, for people typing at grpcurl. Pure.

    action:api_key.* actor:alice@example.com -resource.type:secret "rotated key"

Terms are separated by spaces. `field:value` selects on a field (a value may be "quoted"); the same field
given several times matches any of its values; `-field:value` excludes. The time bounds `after:` and `before:`
follow the same rules: `after:A after:B` is after the earlier of the two, `-after:T` is before T. A bare word or
a "quoted phrase" is searched for (see filters.Search); `-word` excludes events containing it. All terms must
hold.
Errors name the term and its position: `filter.query: unknown field "colour" at character 12 (...)`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from .filters import (
    MAX_TIME_SECONDS,
    MIN_TIME_SECONDS,
    AnyOf,
    Expr,
    Not,
    OccurredBetween,
    Search,
    UnknownEnumValue,
    all_of,
    any_of,
    enum_number,
    has_control_characters,
)

FIELD = "filter.query"
MAX_QUERY_CHARS = 2000
MAX_TERMS = 50


@dataclass(frozen=True, slots=True)
class Term:
    position: int
    """1-based character position of the term in the query."""
    negated: bool
    field: str
    """"" for a search term."""
    value: str


def _error(position: int, detail: str, hint: str = "") -> InvalidArgumentError:
    return InvalidArgumentError(FIELD, f"{detail} at character {position}{f' ({hint})' if hint else ''}")


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Reads a "quoted" value starting at text[start] == '"'; returns it and the index after the quote."""
    chars: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in '"\\':
            chars.append(text[index + 1])
            index += 2
            continue
        if char == '"':
            return "".join(chars), index + 1
        chars.append(char)
        index += 1
    raise _error(start + 1, "unterminated quote")


def tokenize(text: str) -> list[Term]:
    """Splits a query into terms."""
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgumentError(FIELD, f"longer than {MAX_QUERY_CHARS} characters")
    terms: list[Term] = []
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        start = index
        negated = text[index] == "-"
        if negated:
            index += 1
            if index >= len(text) or text[index].isspace():
                raise _error(start + 1, 'a lone "-"')
        if text[index] == '"':
            value, index = _read_quoted(text, index)
            field = ""
        else:
            end = index
            while end < len(text) and not text[end].isspace() and text[end] != ":" and text[end] != '"':
                end += 1
            if end < len(text) and text[end] == ":":
                field = text[index:end]
                if not field:
                    raise _error(start + 1, 'a term cannot start with ":"')
                index = end + 1
                if index < len(text) and text[index] == '"':
                    value, index = _read_quoted(text, index)
                else:
                    end = index
                    while end < len(text) and not text[end].isspace():
                        if text[end] == '"':
                            raise _error(end + 1, "a quote inside a value; quote the whole value")
                        end += 1
                    value, index = text[index:end], end
                if not value:
                    raise _error(start + 1, f'"{field}:" has no value')
            elif end < len(text) and text[end] == '"':
                raise _error(end + 1, "a quote inside a word; quote the whole phrase")
            else:
                field, value, index = "", text[index:end], end
        if index < len(text) and not text[index].isspace():
            raise _error(index + 1, "expected a space after a term")
        terms.append(Term(start + 1, negated, field, value))
        if len(terms) > MAX_TERMS:
            raise InvalidArgumentError(FIELD, f"more than {MAX_TERMS} terms")
    return terms


def _enum(column: str) -> Callable[[str, int], Expr]:
    def build(value: str, position: int) -> Expr:
        try:
            return AnyOf(column, (enum_number(column, value),))
        except UnknownEnumValue as error:
            raise _error(position, str(error), f"one of {error.choices}") from None

    return build


def _timestamp_micros(value: str, position: int) -> int:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _error(position, f"{value!r} is not an RFC 3339 time such as 2026-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        raise _error(position, f"{value!r} has no time zone; add Z or an offset")
    micros = (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    if not MIN_TIME_SECONDS * 1_000_000 <= micros < (MAX_TIME_SECONDS + 1) * 1_000_000:
        raise _error(position, f"{value!r} is outside 0001-01-01..9999-12-31 in UTC")
    return micros


def _action(value: str, position: int) -> Expr:
    if value.endswith("*"):
        prefix = value[:-1]
        if not prefix or "*" in prefix:
            raise _error(position, "an action prefix needs text before a single trailing *")
        return AnyOf("action", prefixes=(prefix,))
    if "*" in value:
        raise _error(position, "* is only allowed at the end of an action")
    return AnyOf("action", (value,))


def _column(column: str) -> Callable[[str, int], Expr]:
    return lambda value, position: AnyOf(column, (value,))


def _actor(value: str, position: int) -> Expr:
    return any_of(AnyOf(column, (value,)) for column in ("actor_id", "actor_slug", "actor_email"))


_FIELDS: dict[str, Callable[[str, int], Expr]] = {
    "action": _action,
    "actor": _actor,
    "actor.id": _column("actor_id"),
    "actor.slug": _column("actor_slug"),
    "actor.email": _column("actor_email"),
    "actor.type": _enum("actor_type"),
    "resource.id": _column("resource_id"),
    "resource.type": _column("resource_type"),
    "resource.name": _column("resource_name"),
    "resource.fqn": _column("resource_fqn"),
    "cluster": _column("cluster_id"),
    "workspace": _column("workspace_id"),
    "outcome": _enum("outcome"),
    "trace": _column("trace_id"),
    "after": lambda value, position: OccurredBetween(_timestamp_micros(value, position), None),
    "before": lambda value, position: OccurredBetween(None, _timestamp_micros(value, position)),
}
FIELD_NAMES = tuple(_FIELDS)


def _either(exprs: list[Expr]) -> Expr:
    """Any of one field's terms. Of time bounds that is the loosest, written as one range (as the database and
    the projections read a range best): after the earliest `after:`, before the latest `before:`."""
    bounds = [expr for expr in exprs if isinstance(expr, OccurredBetween)]
    if not bounds:
        return any_of(exprs)
    starts = [bound.start for bound in bounds if bound.start is not None]  # one field: all after: or all before:
    ends = [bound.end for bound in bounds if bound.end is not None]
    return OccurredBetween(min(starts) if starts else None, max(ends) if ends else None)


def _excluded(expr: Expr) -> Expr:
    """What a negated term matches: not after T is before T and the other way round (occurred_at is never
    NULL), written as the other bound so it stays a range."""
    if isinstance(expr, OccurredBetween):
        return OccurredBetween(None, expr.start) if expr.start is not None else OccurredBetween(expr.end, None)
    return Not(expr)


def compile_query(text: str) -> Expr:
    """The filter a query string stands for (MATCH_ALL for an empty one).

    Raises:
        InvalidArgumentError: naming filter.query, the bad term and its character position.
    """
    positive: dict[str, list[Expr]] = {}
    parts: list[Expr] = []
    for term in tokenize(text):
        if not term.field:
            if has_control_characters(term.value) or not term.value.strip():
                raise _error(term.position, "an empty search term, or one with control characters")
            expr: Expr = Search(term.value)
        else:
            build = _FIELDS.get(term.field.lower())
            if build is None:
                raise _error(term.position, f"unknown field {term.field!r}", f"fields: {', '.join(FIELD_NAMES)}")
            if "\x00" in term.value:
                raise _error(term.position, "a NUL character in a value")
            expr = build(term.value, term.position)
        if term.negated:
            parts.append(_excluded(expr))
        elif term.field:
            positive.setdefault(term.field.lower(), []).append(expr)
        else:
            parts.append(expr)
    parts.extend(_either(exprs) for exprs in positive.values())
    return all_of(parts)
