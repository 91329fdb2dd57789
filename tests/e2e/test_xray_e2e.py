"""Deploy Xray through the agent (deploy_xray.yml, deploy_xray_config.yml via execute_ansible) and
proxy real HTTP requests through it.

No Xray build is reachable from the test machines, so Debian's ``v2ray`` binary (V2Ray 4.34,
Xray's ancestor) is the artifact: the playbooks use only the v4-style command line that both
share (``-version``, ``-test -config FILE``, ``-config FILE``) and a config both understand (an
``http`` inbound, a ``freedom`` outbound). It is installed as ``xray``, from a copy in the test's
temporary folder and from a ``.zip`` served on loopback (like Xray's release zips), and run in the
background with start-stop-daemon; every folder lies under ``tmp_path``. deploy_xray_docker.yml is
only syntax-checked: there is no Docker engine on the test machines.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from myx.deployment_tool import TOOL_DIR
from support.agentproc import free_port
from support.serverproc import ServerProcess

V2RAY = shutil.which("v2ray")
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
BODY = b"hello through xray"

needs_v2ray = pytest.mark.skipif(
    V2RAY is None, reason="v2ray is not installed (scripts/install_test_deps.sh installs it)"
)


class Origin:
    """A loopback HTTP server: the site fetched through the proxy, and the download of a release."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"/hello": BODY}
        files = self.files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = files.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def xray_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A control server with one online agent, ``xray1``, that runs the deployment tool's playbooks
    (shared by the tests of this module: each deploys into its own folders)."""
    server = ServerProcess(tmp_path_factory.mktemp("xray-server")).setup().start()
    try:
        server.add_host("xray1")
        server.start_agent("xray1", ansible_playbook=str(ANSIBLE_PLAYBOOK), deployment_tool_dir="tool")
        server.wait_status("xray1", "online")
        yield server
    finally:
        server.shutdown()


def run_playbook(server: ServerProcess, playbook: str, extra: dict[str, Any]) -> tuple[dict[str, Any], str]:
    started = server.ok(
        server.api.post(
            "/api/hosts/xray1/playbooks", json={"playbook": f"playbooks/{playbook}", "extra_vars": extra}
        )
    )
    done = server.ok(server.api.get(f"/api/commands/{started['command']['id']}", params={"wait": 180}))
    return done, server.output(done["id"]).decode(errors="replace")


def deploy_ok(server: ServerProcess, playbook: str, extra: dict[str, Any]) -> str:
    done, output = run_playbook(server, playbook, extra)
    assert done["status"] == "success", output
    return output


def flat(output: str) -> str:
    """The output with its line breaks and indents folded away (Ansible wraps long messages)."""
    return " ".join(output.split())


def xray_vars(root: Path, port: int) -> dict[str, Any]:
    """Folders under *root*, start-stop-daemon, and one http proxy inbound on loopback *port*."""
    return {
        "xray_install_dir": str(root / "bin"),
        "xray_config_dir": str(root / "etc"),
        "xray_state_dir": str(root / "state"),
        "xray_manager": "background",
        "xray_inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": "http", "settings": {}}],
        "xray_outbounds": [{"protocol": "freedom"}],
        "xray_check_port": port,
    }


def fetch_through(proxy_port: int, url: str) -> bytes:
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy_port}", trust_env=False, timeout=10) as client:
        resp = client.get(url)
        resp.raise_for_status()
        return resp.content


def running_pid(root: Path) -> int:
    """The pid from the playbook's pidfile, checked to be our installed binary under *root*."""
    pid = int((root / "state" / "xray.pid").read_text().strip())
    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert argv0 == str(root / "bin" / "xray"), f"pid {pid} runs {argv0!r}, not our xray"
    return pid


def stop_xray(root: Path) -> None:
    """Stop the xray the playbook started under *root* (only that one: pidfile and cmdline checked)."""
    pidfile = root / "state" / "xray.pid"
    try:
        pid = int(pidfile.read_text().strip())
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, ValueError):
        return  # never started, or already gone
    if argv0 != str(root / "bin" / "xray"):
        return  # the pid is someone else's now
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie waits for init to reap it


@needs_v2ray
def test_xray_deployed_through_the_agent_reconfigured_and_a_bad_config_refused(
    xray_host: ServerProcess, origin: Origin, tmp_path: Path
) -> None:
    artifact = tmp_path / "upload" / "v2ray"
    artifact.parent.mkdir()
    shutil.copy2(str(V2RAY), artifact)
    root = tmp_path / "xray"
    port = free_port()
    extra = {**xray_vars(root, port), "xray_artifact": str(artifact)}
    try:
        output = deploy_ok(xray_host, "deploy_xray.yml", extra)
        assert "binary replaced" in flat(output), output
        assert "config replaced" in flat(output), output
        assert (root / "bin" / "xray").read_bytes() == artifact.read_bytes()
        assert (root / "bin" / "xray").stat().st_mode & 0o777 == 0o755
        config = root / "etc" / "config.json"
        assert config.stat().st_mode & 0o777 == 0o600
        assert fetch_through(port, origin.url("/hello")) == BODY
        first_pid = running_pid(root)

        # a config-only update: another port; xray restarts and serves there
        new_port = free_port()
        output = deploy_ok(xray_host, "deploy_xray_config.yml", xray_vars(root, new_port))
        assert "replaced, xray restarted" in flat(output), output
        assert fetch_through(new_port, origin.url("/hello")) == BODY
        second_pid = running_pid(root)
        assert second_pid != first_pid
        with pytest.raises(httpx.ConnectError):
            fetch_through(port, origin.url("/hello"))
        good_config = config.read_bytes()

        # an invalid config (an unknown inbound protocol) is refused by `xray -test`: the run fails
        # with the validator's output, and the running config stays in place and serving
        bad = xray_vars(root, new_port)
        bad["xray_inbounds"] = [{"listen": "127.0.0.1", "port": new_port, "protocol": "nonsense"}]
        done, output = run_playbook(xray_host, "deploy_xray_config.yml", bad)
        assert done["status"] == "failed", output
        assert "Xray rejected the new config" in flat(output), output
        assert "unknown config id: nonsense" in flat(output), output  # the validator says why
        assert config.read_bytes() == good_config
        assert sorted(p.name for p in config.parent.iterdir()) == ["config.json"]  # no temp file left
        assert running_pid(root) == second_pid
        assert fetch_through(new_port, origin.url("/hello")) == BODY
    finally:
        stop_xray(root)


@needs_v2ray
@pytest.mark.skipif(
    shutil.which("unzip") is None, reason="unzip is not installed (scripts/install_test_deps.sh installs it)"
)
def test_xray_from_a_url_zip_checked_by_sha256(
    xray_host: ServerProcess, origin: Origin, tmp_path: Path
) -> None:
    release = tmp_path / "Xray-linux-64.zip"
    with zipfile.ZipFile(release, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("xray", date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = 0o100755 << 16  # a regular file, rwxr-xr-x (as in Xray's release zips)
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, Path(str(V2RAY)).read_bytes())
        zf.writestr("README.md", "not the binary")
    origin.files["/releases/Xray-linux-64.zip"] = release.read_bytes()
    root = tmp_path / "xray"
    port = free_port()
    # the config as one dict this time (xray_config) instead of xray_inbounds / xray_outbounds
    extra = {
        **xray_vars(root, port),
        "xray_url": origin.url("/releases/Xray-linux-64.zip"),
        "xray_sha256": "0" * 64,
        "xray_config": {
            "log": {"loglevel": "info"},
            "inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": "http", "settings": {}}],
            "outbounds": [{"protocol": "freedom", "tag": "direct"}],
        },
    }
    del extra["xray_inbounds"], extra["xray_outbounds"]
    try:
        # a wrong sha256 fails clearly, and nothing is installed
        done, output = run_playbook(xray_host, "deploy_xray.yml", extra)
        assert done["status"] == "failed", output
        assert "did not match" in flat(output), output
        assert "xray_sha256 is the sha256 of that exact file" in flat(output), output
        assert not (root / "bin" / "xray").exists()

        extra["xray_sha256"] = hashlib.sha256(release.read_bytes()).hexdigest()
        output = deploy_ok(xray_host, "deploy_xray.yml", extra)
        assert "binary replaced" in flat(output), output
        assert (root / "bin" / "xray").read_bytes() == Path(str(V2RAY)).read_bytes()
        assert json.loads((root / "etc" / "config.json").read_text()) == extra["xray_config"]
        assert fetch_through(port, origin.url("/hello")) == BODY
        pid = running_pid(root)

        # the same run again changes nothing: no download, no new binary, no restart
        output = deploy_ok(xray_host, "deploy_xray.yml", extra)
        assert "binary unchanged" in flat(output), output
        assert "config unchanged" in flat(output), output
        assert "changed=0" in output, output
        assert running_pid(root) == pid
    finally:
        stop_xray(root)


@pytest.mark.parametrize("playbook", ["deploy_xray.yml", "deploy_xray_config.yml", "deploy_xray_docker.yml"])
def test_xray_playbooks_syntax(playbook: str) -> None:
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "--syntax-check", str(TOOL_DIR / "playbooks" / playbook)],
        env={**os.environ, "ANSIBLE_CONFIG": str(TOOL_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        cwd=TOOL_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
