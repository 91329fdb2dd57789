"""Install through the control server: REST -> DeploymentService -> Ansible over a real sshd -> agent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.agentproc import free_port
from support.serverproc import MYX, ServerProcess
from support.sshd import SshServer, sshd_unavailable

pytestmark = pytest.mark.skipif(sshd_unavailable() is not None, reason=str(sshd_unavailable()))


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    server = SshServer(Path(f"/tmp/myx-e2e-sshd-{os.getpid()}-{time.monotonic_ns() % 10**6}")).start()
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


@pytest.fixture
def server(tmp_path: Path, pyz: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "server", MYX_AGENT_PYZ=str(pyz), MYX_AGENT_INSTALL_TIMEOUT="30")
    proc.setup().start()
    try:
        yield proc
    finally:
        proc.shutdown()


def add_root_ssh_host(server: ServerProcess, sshd: SshServer, name: str, **fields: Any) -> None:
    """A host on 127.0.0.1 that the control server reaches as root on *sshd*, with its client key."""
    server.add_host(name, address="127.0.0.1", **fields)
    key = sshd.client_key().read_text()
    server.ok(
        server.api.put(f"/api/hosts/{name}/ssh", json={"user": "root", "port": sshd.port, "private_key": key})
    )


def _options(prefix: Path) -> dict[str, str]:
    return {
        "install_dir": str(prefix / "opt"),
        "config_dir": str(prefix / "etc"),
        "state_dir": str(prefix / "state"),
        "service_manager": "supervisor",
        "bind_address": "127.0.0.1",
    }


def _follow(server: ServerProcess, deployment_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    offset, log = 0, ""
    while time.monotonic() < deadline:
        page = server.ok(
            server.api.get(f"/api/deployments/{deployment_id}", params={"log_offset": offset, "wait": 20})
        )
        log += page["log"]
        offset = page["log_offset"] + len(page["log"])
        if page["status"] in ("success", "failed"):
            page["full_log"] = log
            return dict(page)
    raise TimeoutError(f"deployment {deployment_id} not finished; log so far:\n{log}")


def _stop_agent(prefix: Path) -> None:
    """Whatever a test installed under *prefix* is stopped, also when the test failed."""
    pidfile = prefix / "opt" / "myx-agent.pid"
    pyz = prefix / "opt" / "myx-agent.pyz"
    if pyz.exists():
        subprocess.run(
            [sys.executable, str(pyz), "stop", "--pidfile", str(pidfile)], capture_output=True, check=False
        )


def test_fresh_install_over_ssh_ends_online_and_runs_a_command(
    server: ServerProcess, sshd: SshServer, tmp_path: Path
) -> None:
    prefix = tmp_path / "host"
    add_root_ssh_host(server, sshd, "ssh1")
    try:
        started = server.ok(server.api.post("/api/hosts/ssh1/install", json=_options(prefix)))
        done = _follow(server, started["id"])
        assert done["status"] == "success", done["full_log"]
        assert "agent is up" in done["full_log"]
        host = server.wait_status("ssh1", "online", timeout=30)
        assert host["agent"]["status"] == "online"
        assert (prefix / "etc" / "config.json").stat().st_mode & 0o777 == 0o600
        result = server.run("ssh1", "echo", "installed")
        assert result["status"] == "success"
        assert server.output(result["id"]) == b"installed\n"
        # the password and key never come back from the API
        assert "private_key" not in str(server.host("ssh1"))
        removed = _follow(server, server.ok(server.api.post("/api/hosts/ssh1/uninstall"))["id"])
        assert removed["status"] == "success", removed["full_log"]
        assert not (prefix / "opt" / "myx-agent.pyz").exists()
    finally:
        _stop_agent(prefix)


def test_install_into_a_taken_port_picks_another(
    server: ServerProcess, sshd: SshServer, tmp_path: Path
) -> None:
    prefix = tmp_path / "host"
    taken = free_port()
    add_root_ssh_host(server, sshd, "ssh2", rpc_port=taken)
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", taken))
        squatter.listen()
        try:
            started = server.ok(server.api.post("/api/hosts/ssh2/install", json=_options(prefix)))
            done = _follow(server, started["id"])
        finally:
            _stop_agent(prefix)
    assert done["status"] == "success", done["full_log"]
    assert f"port {taken} is taken" in done["full_log"]
    assert server.host("ssh2")["agent"]["rpc_port"] != taken


def test_bad_password_fails_fast_with_a_clear_message(
    server: ServerProcess, sshd: SshServer, tmp_path: Path
) -> None:
    sshd.set_password("myxtest", "the-right-password-1")
    server.add_host("ssh3", address="127.0.0.1")
    server.ok(
        server.api.put(
            "/api/hosts/ssh3/ssh", json={"user": "myxtest", "port": sshd.port, "password": "wrong-password"}
        )
    )
    began = time.monotonic()
    done = _follow(
        server, server.ok(server.api.post("/api/hosts/ssh3/install", json=_options(tmp_path / "h")))["id"]
    )
    assert done["status"] == "failed"
    assert time.monotonic() - began < 60
    assert "denied" in done["error"].lower() or "password" in done["error"].lower(), done["error"]


def test_install_without_credentials_is_refused_at_once(server: ServerProcess) -> None:
    server.add_host("ssh4", address="127.0.0.1")
    resp = server.api.post("/api/hosts/ssh4/install")
    assert resp.status_code == 400
    assert "SSH credentials" in resp.json()["error"]["message"]


def test_cli_install_follow_with_password_as_a_user(
    server: ServerProcess, sshd: SshServer, tmp_path: Path
) -> None:
    sshd.set_password("myxtest", "the-right-password-2")
    home = Path(os.path.expanduser("~myxtest"))
    port = free_port()
    server.add_host("ssh5", address="127.0.0.1", rpc_port=port)
    server.ok(
        server.api.put(
            "/api/hosts/ssh5/ssh",
            json={"user": "myxtest", "port": sshd.port, "password": "the-right-password-2"},
        )
    )
    env = dict(server.env, MYX_SERVER_URL=server.url, MYX_TOKEN=server.token)
    prefix = f"~/myx-e2e-{os.getpid()}"
    try:
        options = [
            *(
                "--install-dir",
                f"{prefix}/opt",
                "--config-dir",
                f"{prefix}/etc",
                "--state-dir",
                f"{prefix}/state",
            ),
            *("--service-manager", "supervisor", "--bind-address", "127.0.0.1"),
        ]
        proc = subprocess.run(
            [*MYX, "hosts", "install", "ssh5", "--follow", *options],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "agent is up" in proc.stdout
        assert server.run("ssh5", "id", "-un")["status"] == "success"
    finally:
        _stop_agent(home / f"myx-e2e-{os.getpid()}")
        subprocess.run(["rm", "-rf", str(home / f"myx-e2e-{os.getpid()}")], check=False)


def test_a_changed_host_key_is_refused(server: ServerProcess, sshd: SshServer, tmp_path: Path) -> None:
    add_root_ssh_host(server, sshd, "ssh6")
    # the control server remembered another key for this address (trust on first use)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = server.workdir / "data" / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {(other.with_suffix('.pub')).read_text().split(' ', 2)[0]} "
                     f"{(other.with_suffix('.pub')).read_text().split(' ', 2)[1]}\n")  # fmt: skip
    done = _follow(
        server, server.ok(server.api.post("/api/hosts/ssh6/install", json=_options(tmp_path / "h")))["id"]
    )
    assert done["status"] == "failed"
    assert "host key" in done["full_log"].lower() or "identification has changed" in done["full_log"].lower()


def test_agent_lifecycle_over_ssh_and_through_the_agent(
    server: ServerProcess, sshd: SshServer, tmp_path: Path
) -> None:
    prefix = tmp_path / "host"
    add_root_ssh_host(server, sshd, "ssh7")
    try:
        done = _follow(
            server, server.ok(server.api.post("/api/hosts/ssh7/install", json=_options(prefix)))["id"]
        )
        assert done["status"] == "success", done["full_log"]
        assert server.ok(server.api.post("/api/hosts/ssh7/agent/status"))["state"] == "running"
        assert server.ok(server.api.post("/api/hosts/ssh7/agent/stop"))["state"] == "stopped"
        server.wait_status("ssh7", "offline", timeout=30)
        assert server.ok(server.api.post("/api/hosts/ssh7/agent/start"))["state"] == "running"
        server.wait_status("ssh7", "online", timeout=30)
        time.sleep(2)  # a few heartbeats: the agent's uptime in the metrics snapshot grows
        before = server.host("ssh7")["metrics"]["uptime"]
        restarted = server.ok(server.api.post("/api/hosts/ssh7/agent/restart", params={"via": "agent"}))
        assert restarted["state"] == "restarting"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            metrics = server.host("ssh7")["metrics"]
            if metrics and metrics["uptime"] < before:
                break  # a new agent process answers the heartbeats
            time.sleep(0.3)
        else:
            raise AssertionError("the agent did not restart")
        assert server.run("ssh7", "true")["status"] == "success"
        bad = server.api.post("/api/hosts/ssh7/agent/stop", params={"via": "agent"})
        assert bad.status_code == 400
    finally:
        _stop_agent(prefix)


def test_many_hosts_install_in_parallel(tmp_path: Path, pyz: Path, sshd: SshServer) -> None:
    """Three installs started together run side by side (MYX_INSTALL_CONCURRENCY=3) and all end online."""
    proc = ServerProcess(
        tmp_path / "server",
        MYX_AGENT_PYZ=str(pyz),
        MYX_AGENT_INSTALL_TIMEOUT="30",
        MYX_INSTALL_CONCURRENCY="3",
    )
    proc.setup().start()
    names = ["par1", "par2", "par3"]
    try:
        for name in names:
            add_root_ssh_host(proc, sshd, name, labels={"wave": "parallel"})
        started = {
            name: proc.ok(proc.api.post(f"/api/hosts/{name}/install", json=_options(tmp_path / name)))["id"]
            for name in names
        }
        # All three have begun installing while none has finished: not queued one after another.
        assert _all_installing_at_once(proc, list(started.values()))
        done = {name: _follow(proc, deployment) for name, deployment in started.items()}
        for name, result in done.items():
            assert result["status"] == "success", f"{name}: {result['full_log']}"
        for name in names:
            proc.wait_status(name, "online", timeout=30)
        ports = {proc.host(name)["agent"]["rpc_port"] for name in names}
        assert len(ports) == 3
        for name in names:
            assert proc.run(name, "echo", name)["status"] == "success"
    finally:
        for name in names:
            _stop_agent(tmp_path / name)
        proc.shutdown()


def _all_installing_at_once(server: ServerProcess, deployments: list[str], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pages = [server.ok(server.api.get(f"/api/deployments/{d}")) for d in deployments]
        if any(page["status"] != "running" for page in pages):
            return False
        if all("installing the agent on" in page["log"] for page in pages):
            return True
        time.sleep(0.2)
    return False
