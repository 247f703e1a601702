"""Who may do what on NATS: the service's users and their permissions, as a nats-server configuration.

One configuration serves everywhere: `audit-service nats-config` prints it, the dev stack runs NATS with it, and
`nats-auth.conf` (what docker-compose.yml gives its NATS) is its output for the default prefixes and one producer.
Passwords are not in it: nats-server reads each from its environment (`$AUDIT_NATS_<USER>_PASSWORD`).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from audit_client.connection import DEFAULT_INBOX_PREFIX, USER_PATTERN
from audit_client.validation import TENANT_PATTERN

from .config import IngestConfig, NatsConfig

INGEST_USER = "ingest"
API_USER = "api"
REACTOR_USER = "reactor"
SERVICE_USERS = (INGEST_USER, API_USER, REACTOR_USER)
DEFAULT_DURABLE = IngestConfig().durable
ALL_TENANTS = "*"
"""As a producer's tenant: every tenant (a platform service that records events for all of them)."""


@dataclass(frozen=True, slots=True)
class NatsUser:
    name: str
    purpose: str
    """One line, written above the user in the configuration."""
    publish: tuple[str, ...]
    """Subjects it may publish to; nothing else."""
    subscribe: tuple[str, ...]
    """Subjects it may subscribe to; nothing else."""

    @property
    def password_variable(self) -> str:
        return password_variable(self.name)


def password_variable(user: str) -> str:
    """The environment variable nats-server reads the user's password from: AUDIT_NATS_<USER>_PASSWORD."""
    return f"AUDIT_NATS_{re.sub(r'[^A-Za-z0-9]', '_', user).upper()}_PASSWORD"


PASSWORD_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
"""Passwords nats-server reads from its environment as the strings they are. It parses a variable's value as a
configuration value: one starting with '-' or a digit may be taken for a number ('-BvZ...' stops the server at
start-up, '5MB' is a size), so a generated password starts with a letter; all of it is URL-safe, as it goes in
NATS URLs."""


def new_password(random_part: str | None = None) -> str:
    """A NATS password for one of the service's users: a letter, then 32 URL-safe random characters."""
    return "p" + (random_part if random_part is not None else secrets.token_urlsafe(24))


def inbox(user: str) -> str:
    """Subjects of the user's own inboxes (where its requests' replies and its pulled messages arrive)."""
    return f"{DEFAULT_INBOX_PREFIX}.{user}.>"


def ingest_user(nats: NatsConfig, durable: str = DEFAULT_DURABLE) -> NatsUser:
    """The ingest workers' user: their own durable consumer only. Allowed to create any consumer of the events
    stream, it could have created a push consumer delivering every tenant's events to any subject, a producer's
    inbox included (JetStream delivers as the server, whatever the subject)."""
    events, dead = nats.events_stream, nats.dead_stream
    return NatsUser(
        name=INGEST_USER,
        purpose=(
            "ingest workers: create the streams, create, pull and read their consumer, acknowledge, dead-letter, "
            "announce commits"
        ),
        publish=(
            f"$JS.API.STREAM.INFO.{events}",
            f"$JS.API.STREAM.CREATE.{events}",
            f"$JS.API.STREAM.INFO.{dead}",
            f"$JS.API.STREAM.CREATE.{dead}",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.{durable}",
            f"$JS.API.CONSUMER.INFO.{events}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{events}.{durable}",
            f"$JS.ACK.{events}.{durable}.>",
            f"{nats.dead_subject_prefix}.>",
            f"{nats.committed_subject_prefix}.>",
        ),
        subscribe=(inbox(INGEST_USER),),
    )


def api_user(nats: NatsConfig) -> NatsUser:
    return NatsUser(
        name=API_USER,
        purpose="API replicas: hear the commit announcements (they carry every tenant's events); publish nothing",
        publish=(),
        subscribe=(f"{nats.committed_subject_prefix}.>",),
    )


def reactor_user(nats: NatsConfig) -> NatsUser:
    """The reactor's user: it publishes the alerts (any tenant's: it raises them all) into the alerts stream, which
    it creates; it may not publish events nor commit announcements, nor read anything but its inbox."""
    alerts = nats.alerts_stream
    return NatsUser(
        name=REACTOR_USER,
        purpose="the reactor: create the alerts stream, publish alerts (JetStream acknowledges them to its inbox)",
        publish=(
            f"$JS.API.STREAM.INFO.{alerts}",
            f"$JS.API.STREAM.CREATE.{alerts}",
            f"{nats.alerts_subject_prefix}.>",
        ),
        subscribe=(inbox(REACTOR_USER),),
    )


def _tenant_list(role: str, name: str, tenants: Sequence[str]) -> str:
    """How the purpose line names `tenants`, once the user name and the tenants are checked.

    Raises:
        ValueError: a bad user name or tenant.
    """
    if not USER_PATTERN.fullmatch(name) or name in SERVICE_USERS:
        raise ValueError(
            f"{role} user {name!r} must match {USER_PATTERN.pattern} and be none of {', '.join(SERVICE_USERS)}"
        )
    if not tenants:
        raise ValueError(f"{role} user {name!r} needs at least one tenant")
    for tenant in tenants:
        if tenant != ALL_TENANTS and not TENANT_PATTERN.fullmatch(tenant):
            raise ValueError(f"tenant {tenant!r} of {role} {name!r} must match {TENANT_PATTERN.pattern} or be *")
    return "every tenant" if ALL_TENANTS in tenants else "tenant " + ", ".join(tenants)


def producer_user(name: str, tenants: Sequence[str], nats: NatsConfig) -> NatsUser:
    """A producer that may publish the events of `tenants` (ALL_TENANTS: any), and read its own inboxes.

    Raises:
        ValueError: a bad user name or tenant.
    """
    tenant_list = _tenant_list("producer", name, tenants)
    return NatsUser(
        name=name,
        purpose=f"a producer of {tenant_list}: publish its events (JetStream acknowledges them to its inbox)",
        publish=tuple(f"{nats.events_subject_prefix}.{tenant}" for tenant in dict.fromkeys(tenants)),
        subscribe=(inbox(name),),
    )


def alerts_subscriber_user(name: str, tenants: Sequence[str], nats: NatsConfig) -> NatsUser:
    """A reader of the alerts of `tenants` (ALL_TENANTS: any) as the reactor publishes them; it publishes nothing.

    Raises:
        ValueError: a bad user name or tenant.
    """
    tenant_list = _tenant_list("alerts subscriber", name, tenants)
    return NatsUser(
        name=name,
        purpose=f"an alerts subscriber of {tenant_list}: hear their alerts as they are published; publish nothing",
        publish=(),
        subscribe=tuple(f"{nats.alerts_subject_prefix}.{tenant}" for tenant in dict.fromkeys(tenants)),
    )


def service_users(
    nats: NatsConfig,
    producers: Mapping[str, Sequence[str]],
    *,
    durable: str = DEFAULT_DURABLE,
    alerts_subscribers: Mapping[str, Sequence[str]] | None = None,
) -> list[NatsUser]:
    """The ingest workers' user (of the durable consumer `durable`), the API's, the reactor's, one per producer
    and one per alerts subscriber ({user: tenants}).

    Raises:
        ValueError: a bad producer or subscriber, or two users whose passwords would share a variable.
    """
    subscribers = alerts_subscribers or {}
    users = [ingest_user(nats, durable), api_user(nats), reactor_user(nats)]
    users += [producer_user(name, tenants, nats) for name, tenants in producers.items()]
    users += [alerts_subscriber_user(name, tenants, nats) for name, tenants in subscribers.items()]
    variables: dict[str, str] = {}
    for user in users:
        other = variables.setdefault(user.password_variable, user.name)
        if user.name in producers and user.name in subscribers:
            raise ValueError(f"user {user.name!r} is both a producer and an alerts subscriber")
        if other != user.name:
            raise ValueError(f"users {other!r} and {user.name!r} would share ${user.password_variable}")
    return users


def _subjects(subjects: Sequence[str]) -> str:
    quoted = [json.dumps(subject) for subject in subjects]
    if len(quoted) <= 2:
        return f"[{', '.join(quoted)}]"
    return "[\n" + "".join(f"          {subject}\n" for subject in quoted) + "        ]"


def render(users: Sequence[NatsUser], *, command: str) -> str:
    """The nats-server `authorization` block for `users` (the global account, where the streams already are).

    Args:
        command: how it was made, for its first lines.
    """
    lines = [
        "# NATS users of the audit log service and what each may do (README: NATS permissions).",
        f"# Written by `{command}`.",
        "# nats-server reads every password from its environment, e.g. $AUDIT_NATS_INGEST_PASSWORD;",
        "# whatever a user is not allowed here is refused.",
        "authorization {",
        "  users: [",
    ]
    for user in users:
        publish = f"allow: {_subjects(user.publish)}" if user.publish else 'deny: [">"]'
        lines += [
            f"    # {user.purpose}",
            "    {",
            f"      user: {json.dumps(user.name)}",
            f"      password: ${user.password_variable}",
            "      permissions: {",
            f"        publish: {{{publish}}}",
            f"        subscribe: {{allow: {_subjects(user.subscribe)}}}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
