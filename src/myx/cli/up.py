"""``myx up``: a control server on SQLite plus a local agent, ready to use in one command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from myx.cli.admin import DataDirOption, ensure_secret, load_settings, setup_logging
from myx.cli.client import ClientConfig, CliError, save_login
from myx.server.db import migrate
from myx.server.errors import MyxError, NotFound
from myx.server.runtime import Runtime
from myx.server.security.tokens import generate_password
from myx.server.settings import Settings

LOCAL_HOST = "local"
AGENT_START_TIMEOUT = 30.0


def up(
    data_dir: DataDirOption = None,
    port: Annotated[int | None, typer.Option(help="API port (default 8700)")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
) -> None:
    """Start a control server on SQLite and a local agent; Ctrl-C stops both."""
    settings = load_settings(data_dir, port=port, host=host, auto_migrate=True)
    ensure_secret(settings)
    setup_logging()
    try:
        first = asyncio.run(_prepare(settings))
    except MyxError as exc:
        raise CliError(exc.message, exit_code=2) from None
    agent = _start_agent(settings)
    try:
        _wait_for_agent(settings, agent)
        _serve(settings, first)
    finally:
        _stop_agent(agent)


def _agent_dir(settings: Settings) -> Path:
    return settings.data_dir / "agent"


async def _prepare(settings: Settings) -> dict[str, Any]:
    """Schema, admin account, CLI login, the local host and its agent bundle. Returns what to print."""
    await migrate.upgrade(settings.db_url)
    runtime = Runtime(settings)
    info: dict[str, Any] = {}
    try:
        async with runtime.sessions() as session:
            if await runtime.users.count(session) == 0:
                password = generate_password()
                admin = await runtime.users.create_user(session, "admin", password, is_admin=True)
                info["password"] = password
            else:
                admin = await runtime.users.get_user(session, "admin")
            token = await runtime.users.create_token(session, admin, "myx up")
            try:
                local = await runtime.hosts.get(session, LOCAL_HOST)
            except NotFound:
                local = await runtime.hosts.create(
                    session, LOCAL_HOST, "127.0.0.1", {"role": "local"}, "the machine running myx up"
                )
            if not _port_free(local.agent.rpc_port):
                await runtime.hosts.set_rpc_port(session, local, _free_port())
            files = runtime.hosts.bundle_files(local, bind_address="127.0.0.1", state_dir="state")
            await session.commit()
        _write_bundle(_agent_dir(settings), files)
    finally:
        await runtime.engine.dispose()
    url = f"http://{_url_host(settings.host)}:{settings.port}"
    save_login(ClientConfig(server_url=url, token=token, ca_file=None))
    info["url"] = url
    return info


def _write_bundle(folder: Path, files: dict[str, tuple[bytes, int]]) -> None:
    for relative, (content, mode) in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, mode)
        tmp.replace(path)


def _start_agent(settings: Settings) -> subprocess.Popen[bytes]:
    folder = _agent_dir(settings)
    log = open(folder / "agent.log", "ab")  # noqa: SIM115 - handed to the child process
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "myx.agent.main", "run", "--config", str(folder / "config.json")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=folder,
            start_new_session=True,  # Ctrl-C reaches us; we stop the agent in order
        )
    finally:
        log.close()


def _wait_for_agent(settings: Settings, agent: subprocess.Popen[bytes]) -> None:
    import json

    from myx.server.security.ca import FleetCA

    config = json.loads((_agent_dir(settings) / "config.json").read_text())
    url = f"https://127.0.0.1:{config['rpc_port']}/{config['rpc_path']}/rpc"
    body = {"jsonrpc": "2.0", "method": "health_check", "id": 1}
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    with httpx.Client(
        verify=FleetCA.load_or_create(settings.ca_dir).agent_ssl_context(), timeout=5
    ) as client:
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if (
                    client.post(url, json=body, headers={"X-Agent-Token": config["agent_token"]}).status_code
                    == 200
                ):
                    return
            time.sleep(0.2)
    tail = (_agent_dir(settings) / "agent.log").read_text(errors="replace").splitlines()[-10:]
    raise CliError("the local agent did not start:\n  " + "\n  ".join(tail), exit_code=1)


def _serve(settings: Settings, info: dict[str, Any]) -> None:
    import uvicorn

    from myx.server.api.app import create_app

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                _banner(settings, info)

    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, proxy_headers=False, server_header=False
    )
    Server(config).run()


def _banner(settings: Settings, info: dict[str, Any]) -> None:
    lines = [
        "",
        f"MyX is up: {info['url']}  (data: {settings.data_dir})",
        f"  API docs:   {info['url']}/api/docs",
    ]
    if "password" in info:
        lines.append(f"  login:      admin / {info['password']}   (shown once: keep it)")
    else:
        lines.append("  login:      admin (password as printed the first time; reset: myx user passwd)")
    lines += [
        "  the CLI is logged in already; try:",
        f"    {_myx_command()} run {LOCAL_HOST} -- uname -a",
        "  Ctrl-C stops the server and the local agent.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _myx_command() -> str:
    """How to call this very CLI again: plain `myx` when that is what PATH finds."""
    argv0 = os.path.abspath(sys.argv[0])
    if argv0.endswith(("main.py", "__main__.py")):
        return f"{sys.executable} -m myx.cli.main"
    found = shutil.which("myx")
    return "myx" if found and os.path.realpath(found) == os.path.realpath(argv0) else argv0


def _stop_agent(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):  # noqa: S104 - only mapping a wildcard to a dialable address
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
