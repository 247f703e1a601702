import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCESS: _ClassVar[Outcome]
    OUTCOME_FAILURE: _ClassVar[Outcome]
    OUTCOME_DENIED: _ClassVar[Outcome]

class SubjectType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBJECT_TYPE_UNSPECIFIED: _ClassVar[SubjectType]
    SUBJECT_TYPE_USER: _ClassVar[SubjectType]
    SUBJECT_TYPE_TEAM: _ClassVar[SubjectType]
    SUBJECT_TYPE_SERVICE_ACCOUNT: _ClassVar[SubjectType]
    SUBJECT_TYPE_VIRTUAL_ACCOUNT: _ClassVar[SubjectType]
    SUBJECT_TYPE_EXTERNAL_IDENTITY: _ClassVar[SubjectType]
    SUBJECT_TYPE_AGENT_IDENTITY: _ClassVar[SubjectType]
    SUBJECT_TYPE_ROLE: _ClassVar[SubjectType]
    SUBJECT_TYPE_SYSTEM: _ClassVar[SubjectType]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCESS: Outcome
OUTCOME_FAILURE: Outcome
OUTCOME_DENIED: Outcome
SUBJECT_TYPE_UNSPECIFIED: SubjectType
SUBJECT_TYPE_USER: SubjectType
SUBJECT_TYPE_TEAM: SubjectType
SUBJECT_TYPE_SERVICE_ACCOUNT: SubjectType
SUBJECT_TYPE_VIRTUAL_ACCOUNT: SubjectType
SUBJECT_TYPE_EXTERNAL_IDENTITY: SubjectType
SUBJECT_TYPE_AGENT_IDENTITY: SubjectType
SUBJECT_TYPE_ROLE: SubjectType
SUBJECT_TYPE_SYSTEM: SubjectType

class Subject(_message.Message):
    __slots__ = ("id", "type", "slug", "display_name", "email", "pat_name", "controller_name", "external_identity_slug")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SLUG_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PAT_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_NAME_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_IDENTITY_SLUG_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: SubjectType
    slug: str
    display_name: str
    email: str
    pat_name: str
    controller_name: str
    external_identity_slug: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[SubjectType, str]] = ..., slug: _Optional[str] = ..., display_name: _Optional[str] = ..., email: _Optional[str] = ..., pat_name: _Optional[str] = ..., controller_name: _Optional[str] = ..., external_identity_slug: _Optional[str] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("type", "id", "name", "fqn")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FQN_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    name: str
    fqn: str
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., fqn: _Optional[str] = ...) -> None: ...

class RequestContext(_message.Message):
    __slots__ = ("route", "method", "ip_address", "user_agent")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    route: str
    method: str
    ip_address: str
    user_agent: str
    def __init__(self, route: _Optional[str] = ..., method: _Optional[str] = ..., ip_address: _Optional[str] = ..., user_agent: _Optional[str] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("before", "after")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    before: _struct_pb2.Struct
    after: _struct_pb2.Struct
    def __init__(self, before: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., after: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("event_id", "tenant", "action", "outcome", "actor", "resource", "parent_resource", "request", "cluster_id", "workspace_id", "message", "metadata", "change", "occurred_at", "trace_id", "span_id", "position", "recorded_at", "hash", "prev_hash", "stream_revision")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PARENT_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    STREAM_REVISION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant: str
    action: str
    outcome: Outcome
    actor: Subject
    resource: Resource
    parent_resource: Resource
    request: RequestContext
    cluster_id: str
    workspace_id: str
    message: str
    metadata: _struct_pb2.Struct
    change: Change
    occurred_at: _timestamp_pb2.Timestamp
    trace_id: str
    span_id: str
    position: int
    recorded_at: _timestamp_pb2.Timestamp
    hash: str
    prev_hash: str
    stream_revision: int
    def __init__(self, event_id: _Optional[str] = ..., tenant: _Optional[str] = ..., action: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., actor: _Optional[_Union[Subject, _Mapping]] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., parent_resource: _Optional[_Union[Resource, _Mapping]] = ..., request: _Optional[_Union[RequestContext, _Mapping]] = ..., cluster_id: _Optional[str] = ..., workspace_id: _Optional[str] = ..., message: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., change: _Optional[_Union[Change, _Mapping]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., position: _Optional[int] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hash: _Optional[str] = ..., prev_hash: _Optional[str] = ..., stream_revision: _Optional[int] = ...) -> None: ...
