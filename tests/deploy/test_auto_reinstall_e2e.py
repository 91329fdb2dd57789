"""Automatic reinstall (seed 001 §3.2/§3.3): an agent that keeps missing its heartbeats is reinstalled
over SSH by the control server, unless an operator stopped it on purpose.

Heartbeats run every 1-1.5 s here and two failed cycles flag the agent, so the whole story takes
seconds instead of minutes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy import test_install_e2e as install
from deploy.test_install_e2e import _follow, _options, _stop_agent, add_root_ssh_host
from support.serverproc import ServerProcess
from support.sshd import SshServer, sshd_unavailable

pytestmark = [
    pytest.mark.skipif(sshd_unavailable() is not None, reason=str(sshd_unavailable())),
    pytest.mark.slow,
]

sshd = install.sshd  # the install tests' private sshd, used here by name


@pytest.fixture
def server(tmp_path: Path, pyz: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path / "server",
        MYX_AGENT_PYZ=str(pyz),
        MYX_AGENT_INSTALL_TIMEOUT="30",
        MYX_AGENT_HEARTBEAT_MIN_INTERVAL="1",
        MYX_AGENT_HEARTBEAT_MAX_INTERVAL="1.5",
        MYX_AGENT_RPC_RETRY_MAX_ATTEMPTS="0",
        MYX_REINSTALL_AFTER_FAILED_CYCLES="2",
        MYX_AUTO_REINSTALL="true",
    )
    proc.setup().start()
    try:
        yield proc
    finally:
        proc.shutdown()


def _deployments(server: ServerProcess, host: str) -> list[dict[str, Any]]:
    return list(server.ok(server.api.get(f"/api/hosts/{host}/deployments")))


def _wait_for_reinstall(server: ServerProcess, host: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in _deployments(server, host) if d["kind"] == "reinstall"]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no automatic reinstall of {host} within {timeout:g} s: {server.host(host)}")


def _wait_for_more_failures(server: ServerProcess, host: str, count: int, timeout: float = 60) -> None:
    """Until the heartbeats have failed *count* times in a row: each was a chance to reinstall."""
    deadline = time.monotonic() + timeout
    while server.host(host)["agent"]["consecutive_failures"] < count:
        assert time.monotonic() < deadline, f"fewer than {count} failed heartbeats in {timeout:g} s"
        time.sleep(0.5)


def test_a_dead_agent_is_reinstalled_but_not_one_stopped_on_purpose(
    server: ServerProcess, sshd: SshServer, tmp_path: Path
) -> None:
    prefix = tmp_path / "host"
    add_root_ssh_host(server, sshd, "auto1")
    try:
        done = _follow(
            server, server.ok(server.api.post("/api/hosts/auto1/install", json=_options(prefix)))["id"]
        )
        assert done["status"] == "success", done["full_log"]
        server.wait_status("auto1", "online", timeout=30)

        # (a) stopped on purpose: flagged for reinstall after two cycles, but left alone
        assert server.ok(server.api.post("/api/hosts/auto1/agent/stop"))["state"] == "stopped"
        deadline = time.monotonic() + 30
        while not server.host("auto1")["agent"]["needs_reinstall"] and time.monotonic() < deadline:
            time.sleep(0.5)
        agent = server.host("auto1")["agent"]
        assert agent["needs_reinstall"], agent
        assert agent["stopped_by_operator"], agent
        _wait_for_more_failures(server, "auto1", agent["consecutive_failures"] + 3)
        assert [d["kind"] for d in _deployments(server, "auto1")] == ["install"]
        assert server.ok(server.api.post("/api/hosts/auto1/agent/start"))["state"] == "running"
        agent = server.wait_status("auto1", "online", timeout=30)["agent"]
        assert not agent["stopped_by_operator"]
        assert not agent["needs_reinstall"]

        # (b) the agent dies behind the control server's back: reinstalled by itself
        _stop_agent(prefix)
        server.wait_status("auto1", "offline", timeout=30)
        reinstall = _wait_for_reinstall(server, "auto1")
        finished = _follow(server, reinstall["id"])
        assert finished["status"] == "success", finished["full_log"]
        assert finished["full_log"].startswith("[myx] automatic reinstall: the agent stopped answering")
        assert "agent is up" in finished["full_log"]
        server.wait_status("auto1", "online", timeout=30)
        assert server.run("auto1", "echo", "back")["status"] == "success"
        # once per cooldown (30 min by default): one automatic reinstall, not one per failed cycle
        assert [d["kind"] for d in _deployments(server, "auto1")].count("reinstall") == 1
    finally:
        _stop_agent(prefix)
