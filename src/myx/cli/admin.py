"""Admin commands that work on the database directly: server, db, user, token."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from myx.cli.client import CliError
from myx.server.db import migrate
from myx.server.db.base import make_engine, make_sessionmaker
from myx.server.errors import ConfigurationError, MyxError
from myx.server.services.users import UserService
from myx.server.settings import Settings

T = TypeVar("T")

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="data directory (default: $MYX_DATA_DIR or ~/.local/share/myx)"),
]


def load_settings(data_dir: Path | None = None, **overrides: object) -> Settings:
    """Settings from MYX_* plus command-line overrides; bad values become one clear error."""
    from pydantic import ValidationError

    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}", exit_code=2) from None


def ensure_secret(settings: Settings) -> None:
    """Generate the data directory's secret.key once, unless MYX_SECRET_KEY is set."""
    if settings.secret_key or settings.secret_file.exists():
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    fd = os.open(settings.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def run_db(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run *work* in one committed session against the settings' database."""

    async def go() -> T:
        if not await migrate.check_up_to_date(settings.db_url):
            raise CliError("the database schema is not up to date: run 'myx db upgrade' first", exit_code=2)
        engine = make_engine(settings.db_url)
        try:
            async with make_sessionmaker(engine)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except MyxError as exc:
        raise CliError(exc.message, exit_code=2 if isinstance(exc, ConfigurationError) else 1) from None


# myx server


def server(
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8700)")] = None,
) -> None:
    """Run the control server (REST API, heartbeats, command streaming)."""
    import uvicorn

    from myx.server.api.app import create_app

    settings = load_settings(data_dir, host=host, port=port)
    setup_logging()
    if not settings.auto_migrate and not asyncio.run(migrate.check_up_to_date(settings.db_url)):
        raise CliError("the database schema is not up to date: run 'myx db upgrade' first", exit_code=2)
    try:
        app = create_app(settings)
    except MyxError as exc:
        raise CliError(exc.message, exit_code=2) from None
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_config=None, proxy_headers=False, server_header=False
    )


# myx db

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None) -> None:
    """Create or upgrade the database schema (and the data directory's secret key)."""
    settings = load_settings(data_dir)
    ensure_secret(settings)
    asyncio.run(migrate.upgrade(settings.db_url))
    typer.echo(f"database is at revision {asyncio.run(migrate.current_revision(settings.db_url))}")


# myx user

user_app = typer.Typer(help="Users of the control server.", no_args_is_help=True)


GenerateOption = Annotated[bool, typer.Option("--generate", help="generate a password and print it once")]


def _password(given: str | None, generate: bool, prompt: str) -> str:
    """The password from the option, a generated one, or a hidden prompt (asked twice)."""
    from myx.server.security.tokens import generate_password

    if generate:
        return generate_password()
    if given is not None:
        return given
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=True))


@user_app.command("create")
def user_create(
    username: str,
    password: Annotated[str | None, typer.Option(help="password (prompted when omitted)")] = None,
    generate: GenerateOption = False,
    admin: Annotated[bool, typer.Option("--admin", help="administrator")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Create a user."""
    settings = load_settings(data_dir)
    secret = _password(password, generate, "password")

    async def work(session: AsyncSession) -> None:
        await UserService().create_user(session, username, secret, is_admin=admin)

    run_db(settings, work)
    typer.echo(f"created user {username}" + (f" with password: {secret}" if generate else ""))


@user_app.command("passwd")
def user_passwd(
    username: str,
    password: Annotated[str | None, typer.Option(help="new password (prompted when omitted)")] = None,
    generate: GenerateOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Set a user's password."""
    settings = load_settings(data_dir)
    secret = _password(password, generate, "new password")

    async def work(session: AsyncSession) -> None:
        service = UserService()
        await service.set_password(session, await service.get_user(session, username), secret)

    run_db(settings, work)
    typer.echo(f"password of {username} changed" + (f": {secret}" if generate else ""))


# myx token

token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="the user the token acts as")],
    name: Annotated[str, typer.Option(help="a label for the token")] = "cli",
    data_dir: DataDirOption = None,
) -> None:
    """Create an API token and print it (shown once; only its hash is stored)."""
    settings = load_settings(data_dir)

    async def work(session: AsyncSession) -> str:
        service = UserService()
        return await service.create_token(session, await service.get_user(session, user), name)

    typer.echo(run_db(settings, work))
