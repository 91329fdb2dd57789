from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, Request, Response, WebSocket, WebSocketDisconnect
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from myx import __version__
from myx.server.api.deps import bearer_token, current_user, get_runtime
from myx.server.db.models import AGENT_OFFLINE, AGENT_ONLINE, AGENT_UNKNOWN, COMMAND_STATES, Agent, Command
from myx.server.errors import AuthenticationFailed

router = APIRouter(tags=["system"])


@router.get("/api/health")
async def health() -> dict[str, str]:
    """Liveness: answers without authentication."""
    return {"status": "ok", "version": __version__}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    runtime = get_runtime(request)
    async with runtime.sessions() as session:
        if not runtime.settings.metrics_public:
            await current_user(request, runtime, session)
        agents = dict(
            (await session.execute(select(Agent.status, func.count()).group_by(Agent.status))).all()
        )
        commands = dict(
            (await session.execute(select(Command.status, func.count()).group_by(Command.status))).all()
        )
    for status in (AGENT_UNKNOWN, AGENT_ONLINE, AGENT_OFFLINE):
        runtime.metrics.agents.labels(status).set(agents.get(status, 0))
    for status in COMMAND_STATES:
        runtime.metrics.commands.labels(status).set(commands.get(status, 0))
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.websocket("/api/events")
async def events(websocket: WebSocket) -> None:
    """Live host/command/batch status changes as JSON messages (token in the header or ?token=)."""
    runtime = get_runtime(websocket)
    token = bearer_token(websocket)
    try:
        if token is None:
            raise AuthenticationFailed("missing token")
        async with runtime.sessions() as session:
            await runtime.users.user_for_token(session, token)
    except AuthenticationFailed:
        await websocket.close(code=4401, reason="unauthenticated")
        return
    await websocket.accept()
    async with runtime.events.subscribe() as queue:
        receiver = asyncio.create_task(_drain(websocket))
        try:
            while not receiver.done():
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getter, receiver}, timeout=30, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    await websocket.send_text(json.dumps(getter.result()))
                else:
                    getter.cancel()
                    if not done:
                        await websocket.send_text(json.dumps({"type": "ping"}))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client messages, so a close is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()
