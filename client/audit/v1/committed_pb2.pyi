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
    events: _containers.RepeatedCompositeFieldContainer[CommittedEvent]
    omitted_events: int
    def __init__(self, prev_position: _Optional[int] = ..., last_position: _Optional[int] = ..., events: _Optional[_Iterable[_Union[CommittedEvent, _Mapping]]] = ..., omitted_events: _Optional[int] = ...) -> None: ...

class CommittedEvent(_message.Message):
    __slots__ = ("canonical", "prev_hash", "hash")
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    canonical: bytes
    prev_hash: bytes
    hash: bytes
    def __init__(self, canonical: _Optional[bytes] = ..., prev_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ...) -> None: ...
