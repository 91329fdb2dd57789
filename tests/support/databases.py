"""Real PostgreSQL and MariaDB/MySQL servers for tests: availability probes and fresh databases.

Defaults match the CI machine (PostgreSQL 127.0.0.1:5432 with trust auth as ``postgres`` or ``root``,
MariaDB 127.0.0.1:3306 as ``root`` with an empty password, an existing database ``test`` on each);
override them with admin URLs::

    MYX_TEST_POSTGRES_URL=postgresql://user:pw@host:5432/test
    MYX_TEST_MARIADB_URL=mysql://root:pw@host:3306/test

Where a server is missing, the probes return a reason to skip. ``MYX_TEST_REQUIRE_DATABASES=1``
turns those skips into failures (for CI, so that a broken database service cannot go unnoticed).

    from support.databases import fresh_database_url

    async with fresh_database_url("postgresql", tmp_path) as url:  # postgresql://…/myx_test_1a2b3c4d
        settings = Settings(database_url=url)
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import URL, make_url

BACKENDS = ("sqlite", "postgresql", "mariadb")

POSTGRES_DEFAULT_USERS = ("postgres", "root")
PROBE_TIMEOUT = 3.0

_T = TypeVar("_T")


def postgres_available() -> str | None:
    """None if a PostgreSQL server can be used, else why not (a pytest skip reason)."""
    return _postgres_admin()[1]


def mariadb_available() -> str | None:
    """None if a MariaDB/MySQL server can be used, else why not (a pytest skip reason)."""
    return _mariadb_admin()[1]


def available(backend: str) -> str | None:
    if backend == "sqlite":
        return None
    if backend == "postgresql":
        return postgres_available()
    if backend in ("mariadb", "mysql"):
        return mariadb_available()
    raise ValueError(f"unknown database backend {backend!r}")


def require(backend: str) -> None:
    """Skip the calling test if ``backend`` is missing (fail instead under MYX_TEST_REQUIRE_DATABASES)."""
    import pytest

    reason = available(backend)
    if reason is None:
        return
    if os.environ.get("MYX_TEST_REQUIRE_DATABASES") == "1":
        pytest.fail(f"{reason} (MYX_TEST_REQUIRE_DATABASES=1)")
    pytest.skip(reason)


@asynccontextmanager
async def fresh_database_url(backend: str, tmp_dir: Path) -> AsyncIterator[str]:
    """A plain URL of a new, empty database of ``backend``, dropped on exit (SQLite: a file in tmp_dir)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_dir / f'myx_test_{secrets.token_hex(4)}.db'}"
    elif backend == "postgresql":
        async with fresh_postgres_url() as url:
            yield url
    elif backend in ("mariadb", "mysql"):
        async with fresh_mariadb_url() as url:
            yield url
    else:
        raise ValueError(f"unknown database backend {backend!r}")


@asynccontextmanager
async def fresh_postgres_url() -> AsyncIterator[str]:
    """``postgresql://postgres@127.0.0.1:5432/myx_test_<random>``: created here, dropped on exit."""
    admin, reason = _postgres_admin()
    if admin is None:
        raise RuntimeError(reason)
    name = _new_name()
    await _postgres_execute(admin, f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        # Connections a failed test leaked would block the DROP.
        await _postgres_execute(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            f'DROP DATABASE IF EXISTS "{name}"',
        )


@asynccontextmanager
async def fresh_mariadb_url() -> AsyncIterator[str]:
    """``mysql://root@127.0.0.1:3306/myx_test_<random>``: created here, dropped on exit."""
    admin, reason = _mariadb_admin()
    if admin is None:
        raise RuntimeError(reason)
    name = _new_name()
    await _mariadb_execute(admin, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        await _mariadb_execute(admin, f"DROP DATABASE IF EXISTS `{name}`")


def _new_name() -> str:
    return f"myx_test_{secrets.token_hex(4)}"


@functools.cache
def _postgres_admin() -> tuple[URL | None, str | None]:
    configured = os.environ.get("MYX_TEST_POSTGRES_URL")
    if configured:
        candidates = [make_url(configured)]
    else:
        candidates = [make_url(f"postgresql://{user}@127.0.0.1:5432/test") for user in POSTGRES_DEFAULT_USERS]
    return _first_usable("PostgreSQL", 5432, candidates, lambda url: _postgres_execute(url, "SELECT 1"))


@functools.cache
def _mariadb_admin() -> tuple[URL | None, str | None]:
    url = make_url(os.environ.get("MYX_TEST_MARIADB_URL") or "mysql://root@127.0.0.1:3306/test")
    return _first_usable("MariaDB", 3306, [url], lambda url: _mariadb_execute(url, "SELECT 1"))


def _first_usable(
    what: str, default_port: int, candidates: list[URL], probe: Callable[[URL], Awaitable[None]]
) -> tuple[URL | None, str | None]:
    host, port = candidates[0].host or "127.0.0.1", candidates[0].port or default_port
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError as exc:
        return None, f"no {what} server at {host}:{port} ({exc.strerror or exc})"
    errors = []
    for url in candidates:
        try:
            _run_in_new_loop(functools.partial(asyncio.wait_for, probe(url), PROBE_TIMEOUT))
        except Exception as exc:
            errors.append(f"{url.render_as_string()}: {type(exc).__name__}: {exc}")
        else:
            return url, None
    return None, f"{what} at {host}:{port} refused the test connection: " + "; ".join(errors)


def _run_in_new_loop(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion on a private loop, even when the caller's loop is running."""
    result: list[_T] = []
    error: list[BaseException] = []

    async def main() -> None:
        result.append(await make())

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="db-probe")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _postgres_execute(url: URL, *statements: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(**_connect_args(url, "user", "database"), timeout=PROBE_TIMEOUT)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _mariadb_execute(url: URL, *statements: str) -> None:
    import aiomysql

    connection = await aiomysql.connect(
        **_connect_args(url, "user", "db"), connect_timeout=PROBE_TIMEOUT, autocommit=True
    )
    try:
        async with connection.cursor() as cursor:
            for statement in statements:
                await cursor.execute(statement)
    finally:
        connection.close()


def _connect_args(url: URL, user_key: str, database_key: str) -> dict[str, Any]:
    args: dict[str, Any] = {"host": url.host or "127.0.0.1", user_key: url.username}
    if url.port is not None:
        args["port"] = url.port
    if url.password is not None:
        args["password"] = url.password
    if url.database:
        args[database_key] = url.database
    return args


@contextmanager
def fresh_database(backend: str, tmp_dir: Path) -> Iterator[str]:
    """Synchronous :func:`fresh_database_url` for tests that are not async (one loop for enter and exit)."""
    manager = fresh_database_url(backend, tmp_dir)
    loop = asyncio.new_event_loop()
    try:
        url = loop.run_until_complete(manager.__aenter__())
        try:
            yield url
        finally:
            loop.run_until_complete(manager.__aexit__(None, None, None))
    finally:
        loop.close()
