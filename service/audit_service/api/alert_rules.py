"""AlertRuleService: tenant admins manage their tenant's alert rules; each change is recorded in the log (see
store/alert_rules.py). Failures are raised as domain errors and mapped to statuses by api/errors.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from audit.v1 import alert_rules_pb2 as pb
from audit.v1 import alert_rules_pb2_grpc as pb_grpc
from audit.v1 import event_pb2
from audit_client.validation import TENANT_PATTERN
from grpc import aio

from ..auth.tokens import Principal
from ..config import TailConfig
from ..core.alert_rule_templates import TEMPLATES, rule_from_template
from ..core.event_filter import timestamp_micros
from ..core.page_token import (
    PageToken,
    decode_id_token,
    decode_page_token,
    encode_id_token,
    encode_page_token,
    query_digest,
)
from ..core.records import micros_to_datetime
from ..core.stored_alert import row_to_alert
from ..errors import InvalidArgumentError, PermissionDeniedError
from ..store import alert_rules as store
from ..store.append import LogAppender
from ..store.reactor import alerts_start, list_alerts
from .alert_watch import AlertWatch
from .auth import current_caller
from .paging import caller_identity, page_size_of

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AlertRuleService"].full_name
UNAUTHENTICATED_ACTOR = store.Actor("unauthenticated", event_pb2.SUBJECT_TYPE_SYSTEM)
"""The actor of rule changes when authentication is disabled."""


def rule_tenant(caller: Principal | None, requested: str, field: str) -> str:
    """The tenant whose rules the call manages: the caller's, who must be its admin (PERMISSION_DENIED otherwise);
    with authentication off, the requested one (required)."""
    if caller is None:
        if not requested:
            raise InvalidArgumentError(field, "is required when authentication is disabled")
        if not TENANT_PATTERN.fullmatch(requested):
            raise InvalidArgumentError(field, f"must match {TENANT_PATTERN.pattern}")
        return requested
    if not caller.admin:
        raise PermissionDeniedError("only tenant admins may manage alert rules")
    if requested and requested != caller.tenant:
        raise PermissionDeniedError(f"{field}: the caller's token is for tenant {caller.tenant!r}")
    return caller.tenant


def actor_of(caller: Principal | None) -> store.Actor:
    return UNAUTHENTICATED_ACTOR if caller is None else store.Actor(caller.subject)


OTHER_CALLER = "belongs to a different tenant or caller"


class AlertRuleServicer(pb_grpc.AlertRuleServiceServicer):
    def __init__(
        self, pool: asyncpg.Pool, appender: LogAppender | None = None, *, watch_config: TailConfig | None = None
    ) -> None:
        """
        Args:
            pool: connections of the service role.
            appender: appends the rule-change events (one per process, shared).
            watch_config: how often a WatchAlerts stream polls for new alerts and sends heartbeats (TailEvents').

        The API publishes nothing on NATS (its NATS user may not: see nats_permissions.py), so the change events
        it appends are not announced: live tails find them at their next poll of the log's head
        (AUDIT_TAIL_POLL_SECONDS).
        """
        self._pool = pool
        self._appender = appender or LogAppender()
        self._watch_config = watch_config or TailConfig()
        self._closing = asyncio.Event()

    def close(self) -> None:
        """The server is shutting down: open WatchAlerts streams end with UNAVAILABLE (their clients resume)."""
        self._closing.set()

    async def CreateAlertRule(
        self, request: pb.CreateAlertRuleRequest, context: aio.ServicerContext
    ) -> pb.CreateAlertRuleResponse:
        caller = current_caller()
        rule = pb.AlertRule()
        rule.CopyFrom(request.alert_rule)
        rule.tenant = rule_tenant(caller, rule.tenant, "alert_rule.tenant")
        async with self._pool.acquire() as conn:
            change = await store.create_rule(conn, self._appender, rule, actor_of(caller))
        return pb.CreateAlertRuleResponse(alert_rule=change.rule)

    async def GetAlertRule(
        self, request: pb.GetAlertRuleRequest, context: aio.ServicerContext
    ) -> pb.GetAlertRuleResponse:
        tenant = rule_tenant(current_caller(), request.tenant, "tenant")
        return pb.GetAlertRuleResponse(alert_rule=await store.get_rule(self._pool, tenant, request.id))

    async def ListAlertRules(
        self, request: pb.ListAlertRulesRequest, context: aio.ServicerContext
    ) -> pb.ListAlertRulesResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        limit = page_size_of(request)
        digest = query_digest(b"alert_rules", tenant.encode(), caller_identity(caller))
        after_id = decode_id_token(request.page_token, digest, mismatch=OTHER_CALLER) if request.page_token else None
        rules = await store.list_rules(self._pool, tenant, after_id, limit + 1)
        next_token = encode_id_token(rules[limit - 1].id, digest) if len(rules) > limit else ""
        return pb.ListAlertRulesResponse(alert_rules=rules[:limit], next_page_token=next_token)

    async def UpdateAlertRule(
        self, request: pb.UpdateAlertRuleRequest, context: aio.ServicerContext
    ) -> pb.UpdateAlertRuleResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.alert_rule.tenant, "alert_rule.tenant")
        paths = list(request.update_mask.paths)
        async with self._pool.acquire() as conn:
            change = await store.update_rule(conn, self._appender, tenant, request.alert_rule, paths, actor_of(caller))
        return pb.UpdateAlertRuleResponse(alert_rule=change.rule)

    async def DeleteAlertRule(
        self, request: pb.DeleteAlertRuleRequest, context: aio.ServicerContext
    ) -> pb.DeleteAlertRuleResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        async with self._pool.acquire() as conn:
            change = await store.delete_rule(
                conn, self._appender, tenant, request.id, request.revision, actor_of(caller)
            )
        return pb.DeleteAlertRuleResponse(alert_rule=change.rule)

    async def ListAlertRuleTemplates(
        self, request: pb.ListAlertRuleTemplatesRequest, context: aio.ServicerContext
    ) -> pb.ListAlertRuleTemplatesResponse:
        return pb.ListAlertRuleTemplatesResponse(
            templates=[
                pb.AlertRuleTemplate(name=t.name, description=t.description, alert_rule=t.rule)
                for t in TEMPLATES.values()
            ]
        )

    async def CreateAlertRuleFromTemplate(
        self, request: pb.CreateAlertRuleFromTemplateRequest, context: aio.ServicerContext
    ) -> pb.CreateAlertRuleFromTemplateResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        rule = rule_from_template(request.template, request.overrides, list(request.override_mask.paths))
        rule.tenant = tenant
        async with self._pool.acquire() as conn:
            change = await store.create_rule(conn, self._appender, rule, actor_of(caller), prefix="overrides")
        return pb.CreateAlertRuleFromTemplateResponse(alert_rule=change.rule)

    async def ListAlerts(self, request: pb.ListAlertsRequest, context: aio.ServicerContext) -> pb.ListAlertsResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        limit = page_size_of(request)
        digest = query_digest(b"alerts", tenant.encode(), caller_identity(caller))
        after_seq = (
            decode_page_token(request.page_token, digest, mismatch=OTHER_CALLER).after_position
            if request.page_token
            else 0
        )
        rows = await list_alerts(self._pool, tenant, after_seq, limit + 1)
        next_token = encode_page_token(PageToken(rows[limit - 1]["seq"], digest)) if len(rows) > limit else ""
        return pb.ListAlertsResponse(alerts=[row_to_alert(row) for row in rows[:limit]], next_page_token=next_token)

    async def WatchAlerts(
        self, request: pb.WatchAlertsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchAlertsResponse]:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        digest = query_digest(b"alerts.watch", tenant.encode(), caller_identity(caller))
        stored_from = None
        start = request.WhichOneof("start")
        if start == "after_cursor":
            after_seq = decode_page_token(
                request.after_cursor,
                digest,
                mismatch=OTHER_CALLER,
                field="after_cursor",
                malformed="is malformed; pass a WatchAlertsResponse.cursor back unchanged",
            ).after_position
        else:
            if start == "from_time":
                stored_from = timestamp_micros(request.from_time, "from_time")
            after_seq = await alerts_start(
                self._pool, tenant, None if stored_from is None else micros_to_datetime(stored_from)
            )
        watch = AlertWatch(
            self._pool, tenant, digest, after_seq, self._closing, self._watch_config, stored_from=stored_from
        )
        async with contextlib.aclosing(watch.responses()) as responses:
            async for response in responses:
                yield response
