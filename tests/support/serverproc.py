"""Start a real control server (``myx server``) on a free loopback port, and agents from its bundles."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

from support.agentproc import free_port

MYX = [sys.executable, "-m", "myx.cli.main"]

FAST_HEARTBEATS = {
    "MYX_AGENT_HEARTBEAT_MIN_INTERVAL": "0.3",
    "MYX_AGENT_HEARTBEAT_MAX_INTERVAL": "0.6",
    "MYX_AGENT_RPC_RETRY_BASE_DELAY": "0.1",
    "MYX_AGENT_RPC_TIMEOUT": "5",
    "MYX_LOG_POLL_WAIT": "5",
}


class ServerProcess:
    def __init__(self, workdir: Path, database_url: str | None = None, **env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = {
            **os.environ,
            "MYX_DATA_DIR": str(workdir / "data"),
            "MYX_SECRET_KEY": "test-secret-key-0123456789abcdef",
            "MYX_PORT": str(self.port),
            "MYX_HOST": "127.0.0.1",
            "MYX_CLI_CONFIG": str(workdir / "cli.json"),
            **FAST_HEARTBEATS,
            # Off unless a test is about it: with heartbeats this fast, an agent a test stops behind
            # the server's back would be reinstalled within seconds.
            "MYX_AUTO_REINSTALL": "false",
            **env,
        }
        if database_url:
            self.env["MYX_DATABASE_URL"] = database_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self._client: httpx.Client | None = None
        self.agents: list[BundledAgent] = []
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def myx(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*MYX, *args], env=self.env, capture_output=True, text=True, timeout=120, input=input, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"myx {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def setup(self) -> ServerProcess:
        """Schema, an admin user and a token (through the CLI's admin commands)."""
        self.myx("db", "upgrade")
        self.myx("user", "create", "admin", "--password", "admin-password-123", "--admin")
        self.token = self.myx("token", "create", "--user", "admin").stdout.strip()
        return self

    def start(self, timeout: float = 30.0) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [*MYX, "server"], env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"control server did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close_client()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close_client()

    def shutdown(self) -> None:
        self.stop()
        for agent in self.agents:
            agent.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # API

    @property
    def api(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120
            )
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def ok(self, resp: httpx.Response) -> Any:
        assert resp.status_code < 400, (
            f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
        )
        return resp.json() if resp.content else None

    def add_host(self, name: str, **fields: Any) -> dict[str, Any]:
        body = {"name": name, "address": "127.0.0.1", "rpc_port": free_port(), **fields}
        return dict(self.ok(self.api.post("/api/hosts", json=body)))

    def start_agent(self, host: str, **config: Any) -> BundledAgent:
        resp = self.api.get(f"/api/hosts/{host}/bundle")
        assert resp.status_code == 200, resp.text
        agent = BundledAgent(self.workdir / f"agent-{host}", resp.content, **config)
        self.agents.append(agent)
        agent.start()
        return agent

    def host(self, name: str) -> dict[str, Any]:
        return dict(self.ok(self.api.get(f"/api/hosts/{name}")))

    def wait_status(self, name: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            host = self.host(name)
            if host["agent"]["status"] == status:
                return host
            time.sleep(0.1)
        raise TimeoutError(f"host {name} not {status} after {timeout} s: {self.host(name)['agent']}")

    def run(self, host: str, command: str, *args: str, wait: float = 120, **extra: Any) -> dict[str, Any]:
        created = self.ok(
            self.api.post(
                "/api/commands", json={"host": host, "command": command, "args": list(args), **extra}
            )
        )
        return dict(self.ok(self.api.get(f"/api/commands/{created['id']}", params={"wait": wait})))

    def wait_command(self, command_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the command reaches *status* (e.g. running), for tests that act mid-command."""
        deadline = time.monotonic() + timeout
        while True:
            command = dict(self.ok(self.api.get(f"/api/commands/{command_id}")))
            if command["status"] == status:
                return command
            assert time.monotonic() < deadline, f"command {command_id} not {status}: {command}"
            time.sleep(0.05)

    def output(self, command_id: str) -> bytes:
        from myx.protocol.output import chunk_bytes

        data, offset = bytearray(), 0
        while True:
            page = self.ok(self.api.get(f"/api/commands/{command_id}/output", params={"offset": offset}))
            data += b"".join(chunk_bytes(c) for c in page["chunks"])
            if page["next_offset"] == offset or page["complete"]:
                return bytes(data)
            offset = page["next_offset"]


class BundledAgent:
    """An agent installed by hand from ``GET /api/hosts/{id}/bundle`` (seed 000 §2)."""

    def __init__(self, folder: Path, bundle: bytes, **config: Any) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            tar.extractall(folder, filter="data")
        settings = json.loads((folder / "config.json").read_text())
        # Tests listen on loopback only; the kill grace is short so timeouts end quickly.
        settings.update(bind_address="127.0.0.1", state_dir="state", kill_grace_seconds=1, **config)
        (folder / "config.json").write_text(json.dumps(settings))
        (folder / "config.json").chmod(0o600)
        self.config = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "myx.agent.main", "run", "--config", str(self.folder / "config.json")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=self.folder,  # commands run without a cwd start here
        )
        log.close()

    def start_supervised(self, pyz: Path) -> Path:
        """Run from a copy of *pyz* under the agent's own supervisor (what an SSH install sets up)."""
        import shutil

        self.pyz = self.folder / "myx-agent.pyz"
        shutil.copy2(pyz, self.pyz)
        subprocess.run(
            [sys.executable, "-I", str(self.pyz), "supervise", "--daemon", "--pidfile", str(self.pidfile),
             "--log", str(self.folder / "agent.log"), "--config", str(self.folder / "config.json")],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return self.pyz

    @property
    def pidfile(self) -> Path:
        return self.folder / "myx-agent.pid"

    def stop(self) -> None:
        if self.pidfile.exists():
            stop = [
                sys.executable,
                "-m",
                "myx.agent.main",
                "stop",
                "--pidfile",
                str(self.pidfile),
                "--timeout",
                "40",
            ]
            subprocess.run(stop, capture_output=True, timeout=60, check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
