"""AnsibleExecutor's SSH method: POST /api/hosts/{id}/playbooks {"method": "ssh"} runs a playbook of
the deployment tool from the control server over a real sshd, as a deployment with a live log; its
extra_vars are held to plain data, since Ansible evaluates them on the control server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deploy import test_install_e2e as install
from deploy.test_install_e2e import _follow, add_root_ssh_host
from support.serverproc import ServerProcess
from support.sshd import SshServer, sshd_unavailable

pytestmark = pytest.mark.skipif(sshd_unavailable() is not None, reason=str(sshd_unavailable()))

sshd = install.sshd  # the install tests' private sshd and control server, used here by name
server = install.server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One control server for the checks that never reach a host (host pb2, without SSH access)."""
    proc = ServerProcess(tmp_path_factory.mktemp("playbook-ssh") / "server")
    proc.setup().start()
    try:
        proc.add_host("pb2", address="127.0.0.1")
        yield proc
    finally:
        proc.shutdown()


def _run(server: ServerProcess, name: str, playbook: str, extra_vars: dict[str, Any]) -> Any:
    return server.api.post(
        f"/api/hosts/{name}/playbooks", json={"playbook": playbook, "extra_vars": extra_vars, "method": "ssh"}
    )


def test_playbooks_run_over_ssh_as_deployments(server: ServerProcess, sshd: SshServer) -> None:
    add_root_ssh_host(server, sshd, "pb1")
    started = server.ok(_run(server, "pb1", "playbooks/ping.yml", {"who": "the SSH test"}))
    assert started["method"] == "ssh"
    assert started["command"] is None
    done = _follow(server, started["deployment"]["id"])
    assert done["status"] == "success", done["full_log"]
    assert done["kind"] == "playbook"
    assert done["full_log"].startswith("[myx] running playbooks/ping.yml over SSH")
    assert "answers the SSH test" in done["full_log"]

    # a playbook that fails says why, in the deployment's error
    failed = _follow(
        server, server.ok(_run(server, "pb1", "playbooks/deploy_caddy.yml", {}))["deployment"]["id"]
    )
    assert failed["status"] == "failed"
    assert "deploy_caddy.yml needs caddy_site_address" in failed["error"]


@pytest.mark.parametrize(
    ("playbook", "extra_vars", "message"),
    [
        ("playbooks/ping.yml", {"who": "{{ lookup('pipe', 'id') }}"}, "templates"),
        ("playbooks/ping.yml", {"nested": {"deep": ["{% if 1 %}x{% endif %}"]}}, "extra_vars.nested.deep[0]"),
        ("playbooks/ping.yml", {"ansible_ssh_common_args": "-o ProxyCommand=id"}, "reserved"),
        ("playbooks/ping.yml", {"myx_pyz_src": "/etc/shadow"}, "reserved"),
        ("playbooks/deploy_xray.yml", {"xray_artifact": "/etc/shadow"}, "names a file on the control server"),
        ("playbooks/ping.yml", {"not a name": 1}, "is not a variable name"),
        ("../../../../etc/passwd", {}, "inside the deployment tool"),
        ("scripts/check_service.py", {}, "must be a .yml file"),
    ],
)
def test_ssh_runs_refuse_what_would_run_on_the_control_server(
    shared: ServerProcess, playbook: str, extra_vars: dict[str, Any], message: str
) -> None:
    # Checked before the SSH credentials: this host has none, and nothing may start.
    resp = _run(shared, "pb2", playbook, extra_vars)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]["message"]
    assert shared.ok(shared.api.get("/api/hosts/pb2/deployments")) == []


def test_ssh_runs_need_ssh_access(shared: ServerProcess) -> None:
    resp = _run(shared, "pb2", "playbooks/ping.yml", {})
    assert resp.status_code == 400
    assert "SSH credentials" in resp.json()["error"]["message"]
