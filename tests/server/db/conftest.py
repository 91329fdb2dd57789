from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.databases import BACKENDS, fresh_database_url, require


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A plain URL of a fresh, empty database on each backend; dropped after the test.

    Skips PostgreSQL/MariaDB where no server is reachable (see support.databases).
    """
    backend: str = request.param
    require(backend)
    fresh = fresh_database_url(backend, tmp_path)
    # One private loop for create and drop; the test runs its own (asyncio.run) in between.
    with asyncio.Runner() as runner:
        url = runner.run(fresh.__aenter__())
        try:
            yield url
        finally:
            runner.run(fresh.__aexit__(None, None, None))
