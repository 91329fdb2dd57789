"""SSH upgrades through the control server: REST/CLI -> DeploymentService -> upgrade_agent.yml -> sshd.

The host is installed over SSH first (key auth, supervisor, under tmp_path); then the zipapp the
control server offers is swapped for a newer build (the upgrade succeeds, `myx hosts upgrade --ssh
--follow`) and for a broken one (rolled back in the playbook's rescue: the deployment fails and says
so, the agent answers on the version before).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import test_install_e2e as install
from deploy.test_install_e2e import _follow, _options, _stop_agent, add_root_ssh_host
from deploy.test_upgrade_e2e import _variant
from support.serverproc import MYX, ServerProcess
from support.sshd import sshd_unavailable

pytestmark = [
    pytest.mark.skipif(sshd_unavailable() is not None, reason=str(sshd_unavailable())),
    pytest.mark.slow,
]

sshd = install.sshd  # the install tests' private sshd, used here by name


@pytest.fixture
def offered(tmp_path: Path, pyz: Path) -> Path:
    """The zipapp this test's control server hands out; the test swaps its content."""
    path = tmp_path / "offered.pyz"
    shutil.copy2(pyz, path)
    return path


@pytest.fixture
def server(tmp_path: Path, offered: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "server", MYX_AGENT_PYZ=str(offered), MYX_AGENT_INSTALL_TIMEOUT="30")
    proc.setup().start()
    try:
        yield proc
    finally:
        proc.shutdown()


def test_ssh_upgrade_then_broken_build_rolled_back(
    server: ServerProcess, sshd: install.SshServer, offered: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "host"
    add_root_ssh_host(server, sshd, "sshup")
    try:
        done = _follow(
            server, server.ok(server.api.post("/api/hosts/sshup/install", json=_options(prefix)))["id"]
        )
        assert done["status"] == "success", done["full_log"]
        before = server.wait_status("sshup", "online", timeout=30)["agent"]["version"]

        # a newer build, through the CLI with a live log
        _variant(offered, tmp_path / "good.pyz", "0.1.1+ssh").replace(offered)
        env = dict(server.env, MYX_SERVER_URL=server.url, MYX_TOKEN=server.token)
        proc = subprocess.run(
            [*MYX, "hosts", "upgrade", "sshup", "--ssh", "--follow", "--health-deadline", "30"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "upgrading sshup to 0.1.1+ssh over SSH" in proc.stdout
        assert "the agent answers on 0.1.1+ssh" in proc.stdout
        assert server.ok(server.api.get("/api/hosts/sshup/deployments"))[0]["kind"] == "upgrade"
        assert (prefix / "opt" / "myx-agent.pyz.backup").stat().st_size > 0
        assert server.run("sshup", "echo", "upgraded")["status"] == "success"

        # a build that does not start: the playbook's rescue restores 0.1.1+ssh
        _variant(offered, tmp_path / "broken.pyz", "0.1.2+broken", broken=True).replace(offered)
        failed = _follow(
            server,
            server.ok(
                server.api.post("/api/hosts/sshup/upgrade", params={"method": "ssh", "health_deadline": 6})
            )["id"],
        )
        assert failed["status"] == "failed", failed["full_log"]
        assert failed["error"].startswith("rolled back: the new version (0.1.2+broken) did not come up")
        assert "version 0.1.1+ssh" in failed["error"]  # the restored agent's health check
        result = server.run("sshup", "echo", "after-rollback")
        assert result["status"] == "success"
        assert server.ok(server.api.post("/api/hosts/sshup/agent/status"))["state"] == "running"
        assert before != "0.1.2+broken"
    finally:
        _stop_agent(prefix)


def test_ssh_upgrade_needs_ssh_access_and_a_known_method(server: ServerProcess) -> None:
    server.add_host("nossh", address="127.0.0.1")
    resp = server.api.post("/api/hosts/nossh/upgrade", params={"method": "ssh"})
    assert resp.status_code == 400
    assert "SSH credentials" in resp.json()["error"]["message"]
    bad = server.api.post("/api/hosts/nossh/upgrade", params={"method": "telnet"})
    assert bad.status_code == 422
    rollout = server.api.post("/api/upgrades", json={"target": ["nossh"], "method": "ssh"})
    assert rollout.status_code == 400
    assert "SSH credentials" in rollout.json()["error"]["message"]
    assert server.api.get("/api/hosts/nossh/deployments").json() == []  # nothing was started
