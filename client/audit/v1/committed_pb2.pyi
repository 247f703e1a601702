from audit.v1 import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CommittedBatch(_message.Message):
    __slots__ = ("prev_position", "last_position", "events", "omitted_events")
    PREV_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OMITTED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    prev_position: int
    last_position: int
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.AuditEvent]
    omitted_events: int
    def __init__(self, prev_position: _Optional[int] = ..., last_position: _Optional[int] = ..., events: _Optional[_Iterable[_Union[_event_pb2.AuditEvent, _Mapping]]] = ..., omitted_events: _Optional[int] = ...) -> None: ...
