"""JSON-RPC over the agent's WebSocket: same methods, plus output pushed as it is printed."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from myx.protocol.output import chunk_bytes
from support.agentproc import TOKEN, AgentProcess


def _connect(agent: AgentProcess, token: str = TOKEN, url: str | None = None) -> Any:
    return connect(
        url or agent.ws_url,
        ssl=agent.ssl_context(),
        additional_headers={"X-Agent-Token": token},
        max_size=None,
    )


async def _request(ws: ClientConnection, id_: int, method: str, **params: Any) -> None:
    await ws.send(json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id_}))


async def _collect(
    ws: ClientConnection, command_id: str, timeout: float = 60
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Notifications for *command_id* until command_finished."""
    outputs: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            params = message.get("params", {})
            if params.get("command_id") != command_id:
                continue
            if message["method"] == "command_output":
                outputs.append(params)
            elif message["method"] == "command_finished":
                return outputs, params


def test_request_response_and_pushed_output(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with _connect(agent) as ws:
            await _request(ws, 1, "health_check")
            assert json.loads(await ws.recv())["result"]["status"] == "ok"
            await _request(
                ws, 2, "execute_command", command="sh", args=["-c", "echo one; echo two >&2; exit 3"]
            )
            reply = json.loads(await ws.recv())  # the reply comes before any output
            assert reply["id"] == 2
            command_id = reply["result"]["command_id"]
            outputs, finished = await _collect(ws, command_id)
            offset = 0
            for out in outputs:
                assert out["offset"] == offset
                offset = out["new_offset"]
            assert finished["new_offset"] == offset
            data = {
                s: b"".join(chunk_bytes(c) for o in outputs for c in o["chunks"] if c["stream"] == s)
                for s in ("stdout", "stderr")
            }
            assert data == {"stdout": b"one\n", "stderr": b"two\n"}
            assert finished["result"]["return_code"] == 3

    asyncio.run(scenario())


def test_output_is_pushed_before_the_command_ends(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with _connect(agent) as ws:
            await _request(
                ws, 1, "execute_command", command="sh", args=["-c", "echo early; sleep 3; echo late"]
            )
            command_id = json.loads(await ws.recv())["result"]["command_id"]
            async with asyncio.timeout(2.5):
                first = json.loads(await ws.recv())
            assert first["method"] == "command_output"
            assert chunk_bytes(first["params"]["chunks"][0]) == b"early\n"
            _, finished = await _collect(ws, command_id)
            assert finished["result"]["status"] == "success"

    asyncio.run(scenario())


def test_large_output_arrives_complete_over_the_socket(agent: AgentProcess) -> None:
    size = 3 * 1024 * 1024
    script = f"import sys; sys.stdout.write('0123456789abcdef' * {size // 16})"

    async def scenario() -> None:
        async with _connect(agent) as ws:
            await _request(ws, 1, "execute_command", command=sys.executable, args=["-c", script])
            command_id = json.loads(await ws.recv())["result"]["command_id"]
            outputs, finished = await _collect(ws, command_id)
            data = b"".join(chunk_bytes(c) for o in outputs for c in o["chunks"])
            assert data == b"0123456789abcdef" * (size // 16)
            assert finished["new_offset"] == size

    asyncio.run(scenario())


def test_concurrent_requests_on_one_socket(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with _connect(agent) as ws:
            await _request(ws, 1, "execute_command", command="sleep", args=["300"], command_id="ws-long")
            assert json.loads(await ws.recv())["id"] == 1
            # a long poll in flight must not block a quick call behind it
            await _request(ws, 2, "get_command_log", command_id="ws-long", wait=30)
            await _request(ws, 3, "health_check")
            async with asyncio.timeout(10):
                while True:
                    message = json.loads(await ws.recv())
                    if message.get("id") == 3:
                        break
            await _request(ws, 4, "cancel_command", command_id="ws-long")
            await _collect(ws, "ws-long")

    asyncio.run(scenario())


@pytest.mark.parametrize(("path", "token", "status"), [("/nope/ws", TOKEN, 404), (None, "wrong", 401)])
def test_handshake_refusals(agent: AgentProcess, path: str | None, token: str, status: int) -> None:
    url = f"wss://127.0.0.1:{agent.config['rpc_port']}{path}" if path else None

    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as info:
            async with _connect(agent, token=token, url=url):
                pass
        assert info.value.response.status_code == status

    asyncio.run(scenario())
