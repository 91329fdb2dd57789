"""Route dependencies as typed aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from myx.server.db.models import User
from myx.server.errors import AuthenticationFailed
from myx.server.runtime import Runtime


def get_runtime(conn: HTTPConnection) -> Runtime:
    runtime: Runtime = conn.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # Browsers cannot set headers on a WebSocket: /api/events also takes ?token=.
    return conn.query_params.get("token") if conn.scope["type"] == "websocket" else None


async def current_user(request: Request, runtime: RuntimeDep, session: SessionDep) -> User:
    token = bearer_token(request)
    if token is None:
        raise AuthenticationFailed("missing API token: send 'Authorization: Bearer <token>'")
    return await runtime.users.user_for_token(session, token)


CurrentUser = Annotated[User, Depends(current_user)]
