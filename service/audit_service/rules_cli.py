"""`audit-service rules ...`: alert rules managed through the API (AlertRuleService), as a tenant admin.

The token comes from --token or AUDIT_TOKEN, the API from --target or AUDIT_API_TARGET (default localhost:50051);
--cacert switches to TLS. Rules are read and printed as protobuf JSON with the proto's field names."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc
from audit.v1 import alert_rules_pb2 as pb
from audit.v1 import alert_rules_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

DEFAULT_TARGET = "localhost:50051"


def add_parser(commands: argparse._SubParsersAction) -> None:
    rules = commands.add_parser("rules", help="manage alert rules through the API (list, get, create, delete, ...)")
    rules.add_argument("--target", help=f"the API (default $AUDIT_API_TARGET or {DEFAULT_TARGET})")
    rules.add_argument("--token", help="a tenant admin's bearer token (default $AUDIT_TOKEN)")
    rules.add_argument("--cacert", type=Path, help="the CA certificate of the API's TLS (default: plaintext)")
    rules.add_argument("--tenant", default="", help="the tenant, when the API runs without authentication")
    actions = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    actions.add_parser("list", help="print every rule of the tenant, one JSON object per line")
    actions.add_parser("templates", help="print the templates, one JSON object per line")
    get = actions.add_parser("get", help="print one rule")
    get.add_argument("id")
    create = actions.add_parser("create", help="create a rule from JSON (an AlertRule) or from a template")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", help="the rule as JSON, or @file to read it from a file")
    source.add_argument("--template", help="a template's name (see `rules templates`)")
    create.add_argument("--overrides", help="with --template: JSON of the fields to replace (all its fields are)")
    delete = actions.add_parser("delete", help="delete a rule")
    delete.add_argument("id")
    delete.add_argument("--revision", type=int, default=0, help="only if the rule is still at this revision")


def _json_argument(text: str) -> str:
    return Path(text[1:]).read_text() if text.startswith("@") else text


def _print(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None, sort_keys=True))


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    target = args.target or os.environ.get("AUDIT_API_TARGET") or DEFAULT_TARGET
    if args.cacert is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(args.cacert.read_bytes()))


async def _run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("AUDIT_TOKEN", "")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with _channel(args) as channel:
        stub = alert_rules_pb2_grpc.AlertRuleServiceStub(channel)
        command = args.rules_command
        if command == "list":
            page_token = ""
            while True:
                page = await stub.ListAlertRules(
                    pb.ListAlertRulesRequest(tenant=args.tenant, page_token=page_token), metadata=metadata
                )
                for rule in page.alert_rules:
                    _print(rule)
                page_token = page.next_page_token
                if not page_token:
                    return 0
        if command == "templates":
            for template in (await stub.ListAlertRuleTemplates(pb.ListAlertRuleTemplatesRequest())).templates:
                _print(template)
            return 0
        if command == "get":
            request = pb.GetAlertRuleRequest(tenant=args.tenant, id=args.id)
            _print((await stub.GetAlertRule(request, metadata=metadata)).alert_rule)
            return 0
        if command == "delete":
            request = pb.DeleteAlertRuleRequest(tenant=args.tenant, id=args.id, revision=args.revision)
            _print((await stub.DeleteAlertRule(request, metadata=metadata)).alert_rule)
            return 0
        if args.template:
            request = pb.CreateAlertRuleFromTemplateRequest(tenant=args.tenant, template=args.template)
            if args.overrides:
                json_format.Parse(_json_argument(args.overrides), request.overrides)
                # Every field the overrides set (FromJsonString takes JSON names and stores the proto's).
                request.override_mask.FromJsonString(
                    ",".join(field.json_name for field, _ in request.overrides.ListFields())
                )
            created = await stub.CreateAlertRuleFromTemplate(request, metadata=metadata)
        else:
            rule = json_format.Parse(_json_argument(args.json), pb.AlertRule())
            rule.tenant = rule.tenant or args.tenant
            created = await stub.CreateAlertRule(pb.CreateAlertRuleRequest(alert_rule=rule), metadata=metadata)
        _print(created.alert_rule)
        return 0


def rules_command(args: argparse.Namespace) -> int:
    """Runs `audit-service rules <action>`; a refused call prints its status and message, exit status 1."""
    try:
        return asyncio.run(_run(args))
    except grpc.aio.AioRpcError as error:
        print(f"audit-service rules: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except (json_format.ParseError, OSError) as error:
        print(f"audit-service rules: {error}", file=sys.stderr)
        return 2
