import datetime

from audit.v1 import event_pb2 as _event_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConditionField(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_FIELD_UNSPECIFIED: _ClassVar[ConditionField]
    CONDITION_FIELD_ACTION: _ClassVar[ConditionField]
    CONDITION_FIELD_ACTOR_ID: _ClassVar[ConditionField]
    CONDITION_FIELD_ACTOR_SLUG: _ClassVar[ConditionField]
    CONDITION_FIELD_ACTOR_EMAIL: _ClassVar[ConditionField]
    CONDITION_FIELD_ACTOR_TYPE: _ClassVar[ConditionField]
    CONDITION_FIELD_RESOURCE_TYPE: _ClassVar[ConditionField]
    CONDITION_FIELD_RESOURCE_ID: _ClassVar[ConditionField]
    CONDITION_FIELD_RESOURCE_NAME: _ClassVar[ConditionField]
    CONDITION_FIELD_RESOURCE_FQN: _ClassVar[ConditionField]
    CONDITION_FIELD_PARENT_RESOURCE_TYPE: _ClassVar[ConditionField]
    CONDITION_FIELD_PARENT_RESOURCE_ID: _ClassVar[ConditionField]
    CONDITION_FIELD_CLUSTER_ID: _ClassVar[ConditionField]
    CONDITION_FIELD_WORKSPACE_ID: _ClassVar[ConditionField]
    CONDITION_FIELD_OUTCOME: _ClassVar[ConditionField]
    CONDITION_FIELD_TRACE_ID: _ClassVar[ConditionField]
    CONDITION_FIELD_REQUEST_METHOD: _ClassVar[ConditionField]
    CONDITION_FIELD_REQUEST_ROUTE: _ClassVar[ConditionField]
    CONDITION_FIELD_IP_ADDRESS: _ClassVar[ConditionField]

class ConditionOperator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_OPERATOR_UNSPECIFIED: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_EQUAL: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_NOT_EQUAL: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_IN: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_NOT_IN: _ClassVar[ConditionOperator]

class ConditionJoin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_JOIN_UNSPECIFIED: _ClassVar[ConditionJoin]
    CONDITION_JOIN_ALL: _ClassVar[ConditionJoin]
    CONDITION_JOIN_ANY: _ClassVar[ConditionJoin]

class Order(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_UNSPECIFIED: _ClassVar[Order]
    ORDER_NEWEST_FIRST: _ClassVar[Order]
    ORDER_OLDEST_FIRST: _ClassVar[Order]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_ADDED: _ClassVar[ChangeKind]
    CHANGE_KIND_REMOVED: _ClassVar[ChangeKind]
    CHANGE_KIND_MODIFIED: _ClassVar[ChangeKind]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_CSV: _ClassVar[ExportFormat]
    EXPORT_FORMAT_NDJSON: _ClassVar[ExportFormat]
    EXPORT_FORMAT_LOG_LINES: _ClassVar[ExportFormat]

class GroupBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_BY_UNSPECIFIED: _ClassVar[GroupBy]
    GROUP_BY_ACTOR: _ClassVar[GroupBy]
    GROUP_BY_ACTION: _ClassVar[GroupBy]
    GROUP_BY_RESOURCE_TYPE: _ClassVar[GroupBy]
    GROUP_BY_OUTCOME: _ClassVar[GroupBy]

class CountSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COUNT_SOURCE_UNSPECIFIED: _ClassVar[CountSource]
    COUNT_SOURCE_PROJECTION: _ClassVar[CountSource]
    COUNT_SOURCE_LOG: _ClassVar[CountSource]
CONDITION_FIELD_UNSPECIFIED: ConditionField
CONDITION_FIELD_ACTION: ConditionField
CONDITION_FIELD_ACTOR_ID: ConditionField
CONDITION_FIELD_ACTOR_SLUG: ConditionField
CONDITION_FIELD_ACTOR_EMAIL: ConditionField
CONDITION_FIELD_ACTOR_TYPE: ConditionField
CONDITION_FIELD_RESOURCE_TYPE: ConditionField
CONDITION_FIELD_RESOURCE_ID: ConditionField
CONDITION_FIELD_RESOURCE_NAME: ConditionField
CONDITION_FIELD_RESOURCE_FQN: ConditionField
CONDITION_FIELD_PARENT_RESOURCE_TYPE: ConditionField
CONDITION_FIELD_PARENT_RESOURCE_ID: ConditionField
CONDITION_FIELD_CLUSTER_ID: ConditionField
CONDITION_FIELD_WORKSPACE_ID: ConditionField
CONDITION_FIELD_OUTCOME: ConditionField
CONDITION_FIELD_TRACE_ID: ConditionField
CONDITION_FIELD_REQUEST_METHOD: ConditionField
CONDITION_FIELD_REQUEST_ROUTE: ConditionField
CONDITION_FIELD_IP_ADDRESS: ConditionField
CONDITION_OPERATOR_UNSPECIFIED: ConditionOperator
CONDITION_OPERATOR_EQUAL: ConditionOperator
CONDITION_OPERATOR_NOT_EQUAL: ConditionOperator
CONDITION_OPERATOR_IN: ConditionOperator
CONDITION_OPERATOR_NOT_IN: ConditionOperator
CONDITION_JOIN_UNSPECIFIED: ConditionJoin
CONDITION_JOIN_ALL: ConditionJoin
CONDITION_JOIN_ANY: ConditionJoin
ORDER_UNSPECIFIED: Order
ORDER_NEWEST_FIRST: Order
ORDER_OLDEST_FIRST: Order
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_ADDED: ChangeKind
CHANGE_KIND_REMOVED: ChangeKind
CHANGE_KIND_MODIFIED: ChangeKind
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_CSV: ExportFormat
EXPORT_FORMAT_NDJSON: ExportFormat
EXPORT_FORMAT_LOG_LINES: ExportFormat
GROUP_BY_UNSPECIFIED: GroupBy
GROUP_BY_ACTOR: GroupBy
GROUP_BY_ACTION: GroupBy
GROUP_BY_RESOURCE_TYPE: GroupBy
GROUP_BY_OUTCOME: GroupBy
COUNT_SOURCE_UNSPECIFIED: CountSource
COUNT_SOURCE_PROJECTION: CountSource
COUNT_SOURCE_LOG: CountSource

class EventFilter(_message.Message):
    __slots__ = ("tenant", "actions", "search", "resource_id", "resource_type", "resource_name", "resource_fqn", "cluster_id", "workspace_id", "actor_slugs", "actor_ids", "actor_types", "outcomes", "start_time", "end_time", "trace_id", "conditions", "condition_join", "query")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FQN_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_SLUGS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_IDS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_TYPES_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    CONDITION_JOIN_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    search: str
    resource_id: str
    resource_type: str
    resource_name: str
    resource_fqn: str
    cluster_id: str
    workspace_id: str
    actor_slugs: _containers.RepeatedScalarFieldContainer[str]
    actor_ids: _containers.RepeatedScalarFieldContainer[str]
    actor_types: _containers.RepeatedScalarFieldContainer[_event_pb2.SubjectType]
    outcomes: _containers.RepeatedScalarFieldContainer[_event_pb2.Outcome]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    trace_id: str
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    condition_join: ConditionJoin
    query: str
    def __init__(self, tenant: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., search: _Optional[str] = ..., resource_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_name: _Optional[str] = ..., resource_fqn: _Optional[str] = ..., cluster_id: _Optional[str] = ..., workspace_id: _Optional[str] = ..., actor_slugs: _Optional[_Iterable[str]] = ..., actor_ids: _Optional[_Iterable[str]] = ..., actor_types: _Optional[_Iterable[_Union[_event_pb2.SubjectType, str]]] = ..., outcomes: _Optional[_Iterable[_Union[_event_pb2.Outcome, str]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., condition_join: _Optional[_Union[ConditionJoin, str]] = ..., query: _Optional[str] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("field", "operator", "values")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    field: ConditionField
    operator: ConditionOperator
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, field: _Optional[_Union[ConditionField, str]] = ..., operator: _Optional[_Union[ConditionOperator, str]] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token", "order", "include_total_size")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    page_size: int
    page_token: str
    order: Order
    include_total_size: bool
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order: _Optional[_Union[Order, str]] = ..., include_total_size: _Optional[bool] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token", "total_size")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.AuditEvent]
    next_page_token: str
    total_size: int
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class GetEventRequest(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class GetEventResponse(_message.Message):
    __slots__ = ("event", "changes", "yaml_diff")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    YAML_DIFF_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.AuditEvent
    changes: _containers.RepeatedCompositeFieldContainer[FieldChange]
    yaml_diff: str
    def __init__(self, event: _Optional[_Union[_event_pb2.AuditEvent, _Mapping]] = ..., changes: _Optional[_Iterable[_Union[FieldChange, _Mapping]]] = ..., yaml_diff: _Optional[str] = ...) -> None: ...

class FieldChange(_message.Message):
    __slots__ = ("path", "kind", "old_value", "new_value")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: ChangeKind
    old_value: _struct_pb2.Value
    new_value: _struct_pb2.Value
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., old_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., new_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class ListResourceHistoryRequest(_message.Message):
    __slots__ = ("tenant", "resource_type", "resource_id", "page_size", "page_token", "order")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    resource_type: str
    resource_id: str
    page_size: int
    page_token: str
    order: Order
    def __init__(self, tenant: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order: _Optional[_Union[Order, str]] = ...) -> None: ...

class ListResourceHistoryResponse(_message.Message):
    __slots__ = ("revisions", "next_page_token")
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[ResourceRevision]
    next_page_token: str
    def __init__(self, revisions: _Optional[_Iterable[_Union[ResourceRevision, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResourceRevision(_message.Message):
    __slots__ = ("event", "changes", "yaml_diff")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    YAML_DIFF_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.AuditEvent
    changes: _containers.RepeatedCompositeFieldContainer[FieldChange]
    yaml_diff: str
    def __init__(self, event: _Optional[_Union[_event_pb2.AuditEvent, _Mapping]] = ..., changes: _Optional[_Iterable[_Union[FieldChange, _Mapping]]] = ..., yaml_diff: _Optional[str] = ...) -> None: ...

class ExportEventsRequest(_message.Message):
    __slots__ = ("filter", "format", "after_position")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    format: ExportFormat
    after_position: int
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., after_position: _Optional[int] = ...) -> None: ...

class ExportEventsResponse(_message.Message):
    __slots__ = ("data", "events", "last_position", "through_position")
    DATA_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    THROUGH_POSITION_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    events: int
    last_position: int
    through_position: int
    def __init__(self, data: _Optional[bytes] = ..., events: _Optional[int] = ..., last_position: _Optional[int] = ..., through_position: _Optional[int] = ...) -> None: ...

class VerifyChainRequest(_message.Message):
    __slots__ = ("tenant", "start_position", "end_position")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    END_POSITION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    start_position: int
    end_position: int
    def __init__(self, tenant: _Optional[str] = ..., start_position: _Optional[int] = ..., end_position: _Optional[int] = ...) -> None: ...

class VerifyChainResponse(_message.Message):
    __slots__ = ("ok", "events_checked", "tenants", "checkpoint_heads_checked", "first_break")
    OK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_HEADS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BREAK_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    events_checked: int
    tenants: int
    checkpoint_heads_checked: int
    first_break: ChainBreak
    def __init__(self, ok: _Optional[bool] = ..., events_checked: _Optional[int] = ..., tenants: _Optional[int] = ..., checkpoint_heads_checked: _Optional[int] = ..., first_break: _Optional[_Union[ChainBreak, _Mapping]] = ...) -> None: ...

class ChainBreak(_message.Message):
    __slots__ = ("tenant", "position", "reason")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    position: int
    reason: str
    def __init__(self, tenant: _Optional[str] = ..., position: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CountEventsRequest(_message.Message):
    __slots__ = ("filter", "interval", "group_by")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    interval: _duration_pb2.Duration
    group_by: GroupBy
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., group_by: _Optional[_Union[GroupBy, str]] = ...) -> None: ...

class CountEventsResponse(_message.Message):
    __slots__ = ("total", "buckets", "groups", "source")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    total: int
    buckets: _containers.RepeatedCompositeFieldContainer[CountBucket]
    groups: _containers.RepeatedCompositeFieldContainer[GroupCount]
    source: CountSource
    def __init__(self, total: _Optional[int] = ..., buckets: _Optional[_Iterable[_Union[CountBucket, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupCount, _Mapping]]] = ..., source: _Optional[_Union[CountSource, str]] = ...) -> None: ...

class CountBucket(_message.Message):
    __slots__ = ("start_time", "count", "groups")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    count: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupCount]
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., count: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupCount, _Mapping]]] = ...) -> None: ...

class GroupCount(_message.Message):
    __slots__ = ("key", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: str
    count: int
    def __init__(self, key: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class TailEventsRequest(_message.Message):
    __slots__ = ("filter", "after_position", "from_time")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    FROM_TIME_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    after_position: int
    from_time: _timestamp_pb2.Timestamp
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ..., after_position: _Optional[int] = ..., from_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TailEventsResponse(_message.Message):
    __slots__ = ("events", "checkpoint_position", "caught_up", "heartbeat")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_POSITION_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.AuditEvent]
    checkpoint_position: int
    caught_up: bool
    heartbeat: bool
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.AuditEvent, _Mapping]]] = ..., checkpoint_position: _Optional[int] = ..., caught_up: _Optional[bool] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class GetCallerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCallerResponse(_message.Message):
    __slots__ = ("authenticated", "tenant", "subject", "admin")
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    authenticated: bool
    tenant: str
    subject: str
    admin: bool
    def __init__(self, authenticated: _Optional[bool] = ..., tenant: _Optional[str] = ..., subject: _Optional[str] = ..., admin: _Optional[bool] = ...) -> None: ...
