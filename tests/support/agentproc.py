"""Start a real ``myx-agent`` process on a free loopback port with real TLS, and talk to it."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

TOKEN = "test-token-0123456789abcdef0123456789"
RPC_PATH = "p4th-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RpcFailure(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        self.code = error.get("code")
        self.message = error.get("message", "")
        self.data = error.get("data")
        super().__init__(f"{self.code}: {self.message}")


class AgentProcess:
    """One agent: its folder (config, ssl/, state/, agent.log), its process and an HTTPS client."""

    def __init__(self, workdir: Path, command: list[str] | None = None, **config: Any) -> None:
        self.workdir = workdir
        self.command = command or [sys.executable, "-m", "myx.agent.main"]
        self.config: dict[str, Any] = {
            "agent_id": "test-agent",
            "agent_token": TOKEN,
            "rpc_port": free_port(),
            "rpc_path": RPC_PATH,
            "bind_address": "127.0.0.1",
            "certificate_path": "ssl/agent.crt",
            "private_key_path": "ssl/agent.key",
            "state_dir": "state",
            "kill_grace_seconds": 1,
            **config,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._next_id = 0
        workdir.mkdir(parents=True, exist_ok=True)

    # files

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def cafile(self) -> Path:
        return self.workdir / "ssl" / "agent.crt"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.config['rpc_port']}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.config['rpc_path']}/rpc"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.config['rpc_port']}/{self.config['rpc_path']}/ws"

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config))
        self.config_path.chmod(0o600)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # process

    def start(self, timeout: float = 20.0) -> AgentProcess:
        for _attempt in range(3):
            self.write_config()
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            self.proc = subprocess.Popen(
                [*self.command, "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
            log.close()
            if self._wait_ready(timeout):
                return self
            if "address already in use" in self.log_tail().lower():
                self.config["rpc_port"] = free_port()  # lost a race for the port: try another
                continue
            break
        raise RuntimeError(f"agent did not start; log:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            if self.cafile.exists():
                with contextlib.suppress(httpx.HTTPError, ssl.SSLError, OSError):
                    self.reset_client()
                    if self.call("health_check")["status"] == "ok":
                        return True
            time.sleep(0.05)
        self.kill()
        return False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait: the agent's graceful shutdown."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close_client()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the agent dies without cleaning up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close_client()

    # client

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    def reset_client(self) -> None:
        self.close_client()
        self._client = httpx.Client(verify=self.ssl_context(), timeout=60.0)

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self.reset_client()
        assert self._client is not None
        return self._client

    def post(self, body: Any, token: str | None = TOKEN, path: str | None = None) -> httpx.Response:
        headers = {"X-Agent-Token": token} if token is not None else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(
            f"{self.base_url}{path}" if path else self.url, content=content, headers=headers
        )

    def call(self, method: str, **params: Any) -> Any:
        self._next_id += 1
        reply = self.post({"jsonrpc": "2.0", "method": method, "params": params, "id": self._next_id}).json()
        if "error" in reply:
            raise RpcFailure(reply["error"])
        return reply["result"]

    def run(self, command: str, *args: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """Execute and follow to the end; returns the last get_command_log reply plus the full output."""
        started = self.call("execute_command", command=command, args=list(args), timeout=timeout, **params)
        return self.follow(started["command_id"], deadline=timeout + 30)

    def follow(self, command_id: str, deadline: float = 60.0, limit: int | None = None) -> dict[str, Any]:
        from myx.protocol.output import chunk_bytes

        offset, chunks = 0, []
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            extra = {"limit": limit} if limit else {}
            reply = self.call("get_command_log", command_id=command_id, offset=offset, wait=5, **extra)
            assert reply["offset"] == offset
            chunks.extend(reply["chunks"])
            offset = reply["new_offset"]
            if reply["is_final"]:
                reply["all_chunks"] = chunks
                reply["output"] = b"".join(chunk_bytes(c) for c in chunks)
                reply["stdout"] = b"".join(chunk_bytes(c) for c in chunks if c["stream"] == "stdout")
                reply["stderr"] = b"".join(chunk_bytes(c) for c in chunks if c["stream"] == "stderr")
                return reply
        raise TimeoutError(f"command {command_id} not final after {deadline} s")


@contextlib.contextmanager
def running_agent(workdir: Path, **config: Any) -> Iterator[AgentProcess]:
    agent = AgentProcess(workdir, **config)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
