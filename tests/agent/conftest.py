from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.agentproc import AgentProcess


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent shared by a test module (tests must not depend on each other's commands)."""
    proc = AgentProcess(tmp_path_factory.mktemp("agent"), max_concurrent_commands=64)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Agents with their own config; every one is stopped at the end of the test."""
    made: list[AgentProcess] = []

    def make(start: bool = True, name: str = "agent", **config: Any) -> AgentProcess:
        proc = AgentProcess(tmp_path / f"{name}{len(made)}", **config)
        made.append(proc)
        if start:
            proc.start()
        return proc

    yield make
    for proc in made:
        proc.stop()
