"""Deploy Caddy through the agent (deploy_caddy.yml via execute_ansible) and fetch the site."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support.agentproc import free_port
from support.serverproc import ServerProcess


@pytest.mark.skipif(
    shutil.which("caddy") is None, reason="caddy is not installed (scripts/install_test_deps.sh installs it)"
)
def test_caddy_deployed_and_answering(make_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = make_server().setup().start()
    server.add_host("web")
    server.start_agent("web", ansible_playbook=str(Path(sys.executable).parent / "ansible-playbook"),
                       deployment_tool_dir="tool")  # fmt: skip
    server.wait_status("web", "online")
    port, admin = free_port(), free_port()
    extra = {
        "caddy_site_address": f"http://127.0.0.1:{port}",
        "caddy_respond": "hello from caddy",
        "caddy_config_dir": str(tmp_path / "caddy"),
        "caddy_admin": f"localhost:{admin}",
        "caddy_manager": "background",
        "caddy_install": "none",
    }
    try:
        started = server.ok(
            server.api.post(
                "/api/hosts/web/playbooks",
                json={"playbook": "playbooks/deploy_caddy.yml", "extra_vars": extra},
            )
        )
        done = server.ok(server.api.get(f"/api/commands/{started['command']['id']}", params={"wait": 180}))
        assert done["status"] == "success", server.output(done["id"]).decode()
        body = ""
        for _ in range(50):
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert body == "hello from caddy"
        # a second run changes the answer through Caddy's admin API (reload, no restart)
        extra["caddy_respond"] = "hello again"
        again = server.ok(
            server.api.post(
                "/api/hosts/web/playbooks",
                json={"playbook": "playbooks/deploy_caddy.yml", "extra_vars": extra},
            )
        )
        assert (
            server.ok(server.api.get(f"/api/commands/{again['command']['id']}", params={"wait": 180}))[
                "status"
            ]
            == "success"
        )
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "hello again"
    finally:
        subprocess.run(
            ["caddy", "stop", "--address", f"localhost:{admin}"], capture_output=True, timeout=30, check=False
        )
