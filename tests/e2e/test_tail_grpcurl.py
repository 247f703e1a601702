"""TailEvents through a real grpcurl (server reflection, JSON out) against the in-process API: live events arrive
in grpcurl's stdout as they are committed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from ..conftest import store_events
from ..factories import make_event

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


class JsonMessages:
    """The messages grpcurl prints (one pretty-printed JSON object each), read from its stdout as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.messages: list[dict] = []
        self._text = ""
        self._decoder = json.JSONDecoder()

    async def until(self, check, *, what: str, within: float = 30.0) -> None:
        """Reads until `check(messages)` holds (the timeout only keeps a broken stream from hanging the test)."""
        try:
            async with asyncio.timeout(within):
                while not check(self.messages):
                    chunk = await self.process.stdout.read(65536)
                    if not chunk:
                        stderr = (await self.process.stderr.read()).decode()
                        raise AssertionError(f"grpcurl exited before {what}: {stderr}; printed {self.messages}")
                    self._text += chunk.decode()
                    self._parse()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; printed {self.messages}") from None

    def _parse(self) -> None:
        while self._text.strip():
            try:
                message, end = self._decoder.raw_decode(self._text.lstrip())
            except json.JSONDecodeError:
                return  # the rest of this message is still on its way
            self.messages.append(message)
            self._text = self._text.lstrip()[end:]

    @property
    def event_ids(self) -> list[str]:
        return [event["event_id"] for message in self.messages for event in message.get("events", [])]


async def test_grpcurl_streams_live_events_of_its_tenant_as_json(api, database, start_worker, publisher):
    await store_events(database, [make_event() for _ in range(3)] + [make_event("globex")])
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        "-d",
        '{"filter":{"tenant":"acme"}}',
        f"127.0.0.1:{api.port}",
        "audit.v1.AuditService/TailEvents",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        printed = JsonMessages(process)
        await printed.until(lambda messages: messages, what="the first message")
        # A tail from now: history is not sent; the first message says it is live at the log's head.
        assert printed.messages[0] == {"checkpoint_position": "4", "caught_up": True}

        await start_worker()
        live = []
        for _ in range(5):
            live.append((await publisher.publish(make_event())).event_id)
            await publisher.publish(make_event("globex"))
        await printed.until(lambda _: len(printed.event_ids) >= len(live), what="the live events")
        assert printed.event_ids == live
        events = [event for message in printed.messages for event in message.get("events", [])]
        assert {event["tenant"] for event in events} == {"acme"}
        assert all(event["action"] == "api_key.create" and len(event["hash"]) == 64 for event in events)
        positions = [int(message["checkpoint_position"]) for message in printed.messages]  # int64: JSON strings
        assert positions == sorted(positions)
        for message in printed.messages[1:]:
            assert "caught_up" not in message
            if "events" in message:  # not a checkpoint for globex's events or a heartbeat
                assert int(message["checkpoint_position"]) >= int(message["events"][-1]["position"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
