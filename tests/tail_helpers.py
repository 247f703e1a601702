"""Reading TailEvents streams in tests."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2


class Reader:
    """Reads a TailEvents stream in the background, keeping every response and when each event arrived.

    `pause()` stops taking messages off the stream (gRPC flow control then stalls the server's writes) until
    `resume()`. A channel passed in is closed with the reader.
    """

    def __init__(self, call, *, channel: grpc.aio.Channel | None = None) -> None:
        self.call = call
        self.channel = channel
        self.responses: list[pb.TailEventsResponse] = []
        self.received_at: dict[str, float] = {}
        self.error: grpc.aio.AioRpcError | None = None
        self.reading = asyncio.Event()
        self.reading.set()
        self.task = asyncio.create_task(self._read())

    @classmethod
    def on_port(cls, port: int, request: pb.TailEventsRequest) -> Reader:
        """A reader on a channel of its own to the API at `port`."""
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return cls(audit_service_pb2_grpc.AuditServiceStub(channel).TailEvents(request), channel=channel)

    async def _read(self) -> None:
        try:
            async for response in self.call:
                now = time.time()
                self.responses.append(response)
                for event in response.events:
                    self.received_at[event.event_id] = now
                await self.reading.wait()
        except grpc.aio.AioRpcError as error:
            self.error = error

    def pause(self) -> None:
        self.reading.clear()

    def resume(self) -> None:
        self.reading.set()

    @property
    def events(self) -> list[event_pb2.AuditEvent]:
        return [event for response in self.responses for event in response.events]

    @property
    def ids(self) -> list[str]:
        return [event.event_id for event in self.events]

    @property
    def positions(self) -> list[int]:
        return [event.position for event in self.events]

    @property
    def checkpoint(self) -> int:
        """The last checkpoint_position received (-1 before any)."""
        return self.responses[-1].checkpoint_position if self.responses else -1

    def in_order_once(self) -> bool:
        return self.positions == sorted(set(self.positions))

    async def until(self, check, within: float = 30.0, what: str = "the stream") -> None:
        """Waits until check(self) holds; fails naming `what` if the stream ends or it takes too long."""
        deadline = asyncio.get_running_loop().time() + within
        while not check(self):
            if self.task.done():
                pytest.fail(f"stream ended ({self.error}) before {what}")
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting for {what}; got {len(self.responses)} responses")
            await asyncio.sleep(0.02)

    async def caught_up(self) -> None:
        await self.until(caught_up, what="caught_up")

    async def received(self, count: int, within: float = 60.0) -> None:
        await self.until(lambda reader: len(reader.ids) >= count, within=within, what=f"{count} events")

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close()


def caught_up(reader: Reader) -> bool:
    return any(response.caught_up for response in reader.responses)


def assert_same_sequence(received: list[str], expected: list[str], what: str = "the tail") -> None:
    """received == expected, failing with what differs (gaps, repeats, order) rather than two long lists."""
    if received == expected:
        return
    missing = set(expected) - set(received)
    repeated = len(received) - len(set(received))
    first = next((i for i, (a, b) in enumerate(zip(received, expected, strict=False)) if a != b), None)
    pytest.fail(
        f"{what}: {len(received)} events received, {len(expected)} expected; {len(missing)} missing, "
        f"{repeated} repeated, {len(set(received) - set(expected))} unexpected; first difference at index {first}"
    )
