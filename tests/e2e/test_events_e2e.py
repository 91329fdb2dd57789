"""/api/events: live host and command status for UI clients over a WebSocket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from support.serverproc import ServerProcess


def test_command_status_changes_are_pushed(server: ServerProcess) -> None:
    async def scenario() -> list[dict[str, Any]]:
        url = f"ws://127.0.0.1:{server.port}/api/events?token={server.token}"
        seen: list[dict[str, Any]] = []
        async with connect(url) as ws:
            await asyncio.sleep(0.2)
            created = await asyncio.to_thread(
                server.api.post, "/api/commands", json={"host": "web1", "command": "true"}
            )
            command_id = created.json()["id"]
            async with asyncio.timeout(20):
                while True:
                    event = json.loads(await ws.recv())
                    if event.get("id") == command_id:
                        seen.append(event)
                        if event["status"] == "success":
                            return seen

    events = asyncio.run(scenario())
    assert events[0]["status"] == "pending"
    assert events[-1]["status"] == "success"


def test_events_need_a_token(server: ServerProcess) -> None:
    async def scenario() -> None:
        with pytest.raises((InvalidStatus, ConnectionClosed)):
            async with connect(f"ws://127.0.0.1:{server.port}/api/events?token=wrong") as ws:
                await ws.recv()

    asyncio.run(scenario())
