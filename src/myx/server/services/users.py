"""Users and API tokens (hashed at rest; roles come with RBAC)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from myx.server.db.base import utcnow
from myx.server.db.models import ApiToken, User
from myx.server.errors import AlreadyExists, AuthenticationFailed, InvalidInput, NotFound
from myx.server.security.tokens import (
    hash_password,
    new_api_token,
    parse_api_token,
    token_matches,
    verify_password,
)

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD = 8
# Writing last_used_at on every request would turn each read into a write.
TOUCH_EVERY = timedelta(minutes=1)


class UserService:
    async def create_user(
        self, session: AsyncSession, username: str, password: str, is_admin: bool = False
    ) -> User:
        if not USERNAME.fullmatch(username):
            raise InvalidInput("username: 1-64 characters of letters, digits, '_', '.', '@', '-'")
        if len(password) < MIN_PASSWORD:
            raise InvalidInput(f"password must be at least {MIN_PASSWORD} characters")
        if (await session.execute(select(User.id).where(User.username == username))).first() is not None:
            raise AlreadyExists(f"user {username!r} already exists")
        user = User(username=username, password_hash=hash_password(password), is_admin=is_admin)
        session.add(user)
        await session.flush()
        return user

    async def get_user(self, session: AsyncSession, username: str) -> User:
        user = (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()
        if user is None:
            raise NotFound(f"no user {username!r}")
        return user

    async def count(self, session: AsyncSession) -> int:
        return int((await session.execute(select(func.count()).select_from(User))).scalar_one())

    async def set_password(self, session: AsyncSession, user: User, password: str) -> None:
        if len(password) < MIN_PASSWORD:
            raise InvalidInput(f"password must be at least {MIN_PASSWORD} characters")
        user.password_hash = hash_password(password)

    async def authenticate(self, session: AsyncSession, username: str, password: str) -> User:
        user = (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()
        # Same answer for an unknown user and a wrong password: no account enumeration.
        if user is None or user.disabled or not verify_password(user.password_hash, password):
            raise AuthenticationFailed("wrong username or password")
        return user

    async def create_token(
        self, session: AsyncSession, user: User, name: str = "", expires_at: datetime | None = None
    ) -> str:
        token_id, full, secret_hash = new_api_token()
        session.add(
            ApiToken(
                id=token_id, user_id=user.id, name=name[:128], secret_hash=secret_hash, expires_at=expires_at
            )
        )
        await session.flush()
        return full

    async def user_for_token(self, session: AsyncSession, token: str) -> User:
        parsed = parse_api_token(token)
        if parsed is None:
            raise AuthenticationFailed("invalid API token")
        token_id, secret = parsed
        row = await session.get(ApiToken, token_id)
        if row is None or not token_matches(secret, row.secret_hash):
            raise AuthenticationFailed("invalid API token")
        now = utcnow()
        if row.expires_at is not None and row.expires_at <= now:
            raise AuthenticationFailed("API token expired")
        if row.user.disabled:
            raise AuthenticationFailed("user disabled")
        if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
            row.last_used_at = now
            await session.commit()
        return row.user
