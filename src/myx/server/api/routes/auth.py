from __future__ import annotations

from fastapi import APIRouter

from myx.server.api.deps import CurrentUser, RuntimeDep, SessionDep
from myx.server.api.schemas import LoginIn, TokenOut, UserOut

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/login", response_model=TokenOut)
async def login(body: LoginIn, runtime: RuntimeDep, session: SessionDep) -> TokenOut:
    user = await runtime.users.authenticate(session, body.username, body.password)
    token = await runtime.users.create_token(session, user, body.token_name)
    await session.commit()
    return TokenOut(token=token, username=user.username)


@router.get("/me", response_model=UserOut)
async def me(user: CurrentUser) -> UserOut:
    return UserOut(id=user.id, username=user.username, is_admin=user.is_admin)
