from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A control server with two online agents (web1, web2), shared by a test module."""
    proc = ServerProcess(tmp_path_factory.mktemp("server")).setup().start()
    try:
        for name in ("web1", "web2"):
            proc.add_host(name, labels={"role": "web"})
            proc.start_agent(name)
        for name in ("web1", "web2"):
            proc.wait_status(name, "online")
        yield proc
    finally:
        proc.shutdown()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    made: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        proc = ServerProcess(tmp_path / f"server{len(made)}", **env)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.shutdown()
