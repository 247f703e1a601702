import datetime

from audit.v1 import audit_service_pb2 as _audit_service_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AlertSeverity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_SEVERITY_UNSPECIFIED: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_INFO: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_LOW: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_MEDIUM: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_HIGH: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_CRITICAL: _ClassVar[AlertSeverity]
ALERT_SEVERITY_UNSPECIFIED: AlertSeverity
ALERT_SEVERITY_INFO: AlertSeverity
ALERT_SEVERITY_LOW: AlertSeverity
ALERT_SEVERITY_MEDIUM: AlertSeverity
ALERT_SEVERITY_HIGH: AlertSeverity
ALERT_SEVERITY_CRITICAL: AlertSeverity

class AlertThreshold(_message.Message):
    __slots__ = ("count", "window", "group_by")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    count: int
    window: _duration_pb2.Duration
    group_by: str
    def __init__(self, count: _Optional[int] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., group_by: _Optional[str] = ...) -> None: ...

class AlertRule(_message.Message):
    __slots__ = ("id", "tenant", "display_name", "enabled", "filter", "query", "threshold", "severity", "message_template", "destinations", "create_time", "update_time", "revision", "broken_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BROKEN_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant: str
    display_name: str
    enabled: bool
    filter: _audit_service_pb2.EventFilter
    query: str
    threshold: AlertThreshold
    severity: AlertSeverity
    message_template: str
    destinations: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    revision: int
    broken_reason: str
    def __init__(self, id: _Optional[str] = ..., tenant: _Optional[str] = ..., display_name: _Optional[str] = ..., enabled: _Optional[bool] = ..., filter: _Optional[_Union[_audit_service_pb2.EventFilter, _Mapping]] = ..., query: _Optional[str] = ..., threshold: _Optional[_Union[AlertThreshold, _Mapping]] = ..., severity: _Optional[_Union[AlertSeverity, str]] = ..., message_template: _Optional[str] = ..., destinations: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., broken_reason: _Optional[str] = ...) -> None: ...

class CreateAlertRuleRequest(_message.Message):
    __slots__ = ("alert_rule",)
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    alert_rule: AlertRule
    def __init__(self, alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class CreateAlertRuleResponse(_message.Message):
    __slots__ = ("alert_rule",)
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    alert_rule: AlertRule
    def __init__(self, alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class GetAlertRuleRequest(_message.Message):
    __slots__ = ("tenant", "id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    id: str
    def __init__(self, tenant: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class GetAlertRuleResponse(_message.Message):
    __slots__ = ("alert_rule",)
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    alert_rule: AlertRule
    def __init__(self, alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class ListAlertRulesRequest(_message.Message):
    __slots__ = ("tenant", "page_size", "page_token")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    page_size: int
    page_token: str
    def __init__(self, tenant: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertRulesResponse(_message.Message):
    __slots__ = ("alert_rules", "next_page_token")
    ALERT_RULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alert_rules: _containers.RepeatedCompositeFieldContainer[AlertRule]
    next_page_token: str
    def __init__(self, alert_rules: _Optional[_Iterable[_Union[AlertRule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateAlertRuleRequest(_message.Message):
    __slots__ = ("alert_rule", "update_mask")
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    alert_rule: AlertRule
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateAlertRuleResponse(_message.Message):
    __slots__ = ("alert_rule",)
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    alert_rule: AlertRule
    def __init__(self, alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class DeleteAlertRuleRequest(_message.Message):
    __slots__ = ("tenant", "id", "revision")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    id: str
    revision: int
    def __init__(self, tenant: _Optional[str] = ..., id: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteAlertRuleResponse(_message.Message):
    __slots__ = ("alert_rule",)
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    alert_rule: AlertRule
    def __init__(self, alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class ListAlertRuleTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAlertRuleTemplatesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[AlertRuleTemplate]
    def __init__(self, templates: _Optional[_Iterable[_Union[AlertRuleTemplate, _Mapping]]] = ...) -> None: ...

class AlertRuleTemplate(_message.Message):
    __slots__ = ("name", "description", "alert_rule")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    alert_rule: AlertRule
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class CreateAlertRuleFromTemplateRequest(_message.Message):
    __slots__ = ("tenant", "template", "overrides", "override_mask")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_MASK_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    template: str
    overrides: AlertRule
    override_mask: _field_mask_pb2.FieldMask
    def __init__(self, tenant: _Optional[str] = ..., template: _Optional[str] = ..., overrides: _Optional[_Union[AlertRule, _Mapping]] = ..., override_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class CreateAlertRuleFromTemplateResponse(_message.Message):
    __slots__ = ("alert_rule",)
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    alert_rule: AlertRule
    def __init__(self, alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "tenant", "rule_id", "rule_revision", "severity", "group_key", "window_start", "window_end", "message", "event_positions", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_REVISION_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    GROUP_KEY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EVENT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant: str
    rule_id: str
    rule_revision: int
    severity: AlertSeverity
    group_key: str
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    message: str
    event_positions: _containers.RepeatedScalarFieldContainer[int]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., tenant: _Optional[str] = ..., rule_id: _Optional[str] = ..., rule_revision: _Optional[int] = ..., severity: _Optional[_Union[AlertSeverity, str]] = ..., group_key: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., event_positions: _Optional[_Iterable[int]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("tenant", "page_size", "page_token")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    page_size: int
    page_token: str
    def __init__(self, tenant: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_page_token")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    next_page_token: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("tenant", "after_cursor", "from_time")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    FROM_TIME_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    after_cursor: str
    from_time: _timestamp_pb2.Timestamp
    def __init__(self, tenant: _Optional[str] = ..., after_cursor: _Optional[str] = ..., from_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchAlertsResponse(_message.Message):
    __slots__ = ("alert", "cursor", "caught_up", "heartbeat")
    ALERT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    alert: Alert
    cursor: str
    caught_up: bool
    heartbeat: bool
    def __init__(self, alert: _Optional[_Union[Alert, _Mapping]] = ..., cursor: _Optional[str] = ..., caught_up: _Optional[bool] = ..., heartbeat: _Optional[bool] = ...) -> None: ...
