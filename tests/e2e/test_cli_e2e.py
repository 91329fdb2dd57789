"""The `myx` command line against a real control server and agents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from support.agentproc import free_port
from support.serverproc import MYX, ServerProcess


def _myx(server: ServerProcess, *args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(server.env, MYX_SERVER_URL=server.url)
    if token:
        env["MYX_TOKEN"] = server.token
    return subprocess.run([*MYX, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_run_on_one_host_streams_output_and_returns_its_exit_code(server: ServerProcess) -> None:
    proc = _myx(server, "run", "web1", "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == "out\n"
    assert "err\n" in proc.stderr


def test_run_passes_option_like_words_after_the_separator(server: ServerProcess) -> None:
    proc = _myx(server, "run", "web2", "--", "ls", "-d", "--", "/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "/\n"


def test_run_over_a_label_prefixes_lines_by_host_and_fails_if_any_host_failed(server: ServerProcess) -> None:
    ok = _myx(server, "run", "role=web", "--", "echo", "hello")
    assert ok.returncode == 0, ok.stderr
    lines = sorted(line for line in ok.stdout.splitlines() if "hello" in line)
    assert [line.split("|")[0].strip() for line in lines] == ["web1", "web2"]
    bad = _myx(server, "run", "web1", "web2", "--shell", "--", "false")
    assert bad.returncode != 0


def test_run_json(server: ServerProcess) -> None:
    proc = _myx(server, "run", "--json", "web1", "--", "echo", "json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "success"
    assert result["exit_code"] == 0


def test_logs(server: ServerProcess) -> None:
    done = server.run("web1", "sh", "-c", "echo first; echo second")
    proc = _myx(server, "logs", done["id"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "first\nsecond\n"
    follow = _myx(server, "logs", "-f", done["id"])
    assert follow.stdout == "first\nsecond\n"


def test_hosts_add_list_show_bundle_rm(server: ServerProcess, tmp_path: Path) -> None:
    port = str(free_port())
    added = _myx(server, "hosts", "add", "cli-host", "127.0.0.1", "--label", "env=test", "--rpc-port", port)
    assert added.returncode == 0, added.stderr
    listed = _myx(server, "hosts", "list", "--json")
    assert "cli-host" in {h["name"] for h in json.loads(listed.stdout)}
    shown = _myx(server, "hosts", "show", "cli-host")
    assert shown.returncode == 0
    assert "cli-host" in shown.stdout
    out = tmp_path / "bundle"
    bundle = _myx(server, "hosts", "bundle", "cli-host", "--out", str(out))
    assert bundle.returncode == 0, bundle.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["rpc_port"] == int(port)
    assert (out / "config.json").stat().st_mode & 0o777 == 0o600
    assert (out / "ssl" / "agent.key").stat().st_mode & 0o777 == 0o600
    assert (out / "ssl" / "ca.crt").exists()
    removed = _myx(server, "hosts", "rm", "cli-host", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert _myx(server, "hosts", "show", "cli-host").returncode != 0


def test_errors_are_one_line_without_traceback(server: ServerProcess) -> None:
    for args, token in (
        (("hosts", "show", "no-such-host"), True),
        (("run", "no-such-host", "--", "true"), True),
        (("hosts", "list"), False),
        (("logs", "nope"), True),
    ):
        proc = _myx(server, *args, token=token)
        assert proc.returncode != 0, args
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("myx: error:"), proc.stderr
    unreachable = subprocess.run(
        [*MYX, "hosts", "list"],
        env=dict(server.env, MYX_SERVER_URL=f"http://127.0.0.1:{free_port()}", MYX_TOKEN="x"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unreachable.returncode != 0
    assert "cannot reach" in unreachable.stderr


def test_login_then_run_uses_the_saved_token(server: ServerProcess, tmp_path: Path) -> None:
    env = dict(server.env, MYX_CLI_CONFIG=str(tmp_path / "cli.json"))
    env.pop("MYX_TOKEN", None)
    login = subprocess.run(
        [*MYX, "login", "--server", server.url, "--username", "admin", "--password", "admin-password-123"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert (tmp_path / "cli.json").stat().st_mode & 0o777 == 0o600
    run = subprocess.run(
        [*MYX, "run", "web1", "--", "echo", "saved"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stdout == "saved\n", run.stderr


def test_myx_up_starts_everything_and_runs_a_command(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYX_")} | {
        "MYX_DATA_DIR": str(tmp_path / "data"),
        "MYX_CLI_CONFIG": str(tmp_path / "cli.json"),
        "HOME": str(tmp_path),
    }
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([*MYX, "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        banner = ""
        while time.monotonic() < deadline and "myx run" not in banner:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
            banner = (tmp_path / "up.log").read_text()
        assert "admin / " in banner
        # heartbeats mark the local agent online; then the printed command works
        run = None
        for _ in range(60):
            run = subprocess.run(
                [*MYX, "run", "local", "--", "echo", "from-up"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if run.returncode == 0:
                break
            time.sleep(1)
        assert run is not None
        assert run.stdout == "from-up\n", run.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200
    finally:
        up.send_signal(signal.SIGINT)
        try:
            assert up.wait(30) in (0, 130)  # 130: the conventional status after Ctrl-C
        finally:
            if up.poll() is None:
                up.kill()
            log.close()
    # Ctrl-C stopped the agent too: nothing listens on its port any more
    agent_port = json.loads((tmp_path / "data" / "agent" / "config.json").read_text())["rpc_port"]
    import socket

    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", agent_port)) != 0
    # running again reuses the data (no new password)
    again = subprocess.Popen(
        [*MYX, "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        assert again.stdout is not None
        while time.monotonic() < deadline:
            line = again.stdout.readline()
            text += line
            if "myx run" in line or not line:
                break
        assert "password as printed the first time" in text, text
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(30)


def test_user_passwd_then_login_with_the_new_password(server: ServerProcess, tmp_path: Path) -> None:
    server.myx("user", "create", "carol", "--password", "first-password-1")
    changed = server.myx("user", "passwd", "carol", "--password", "second-password-2")
    assert "changed" in changed.stdout
    assert (
        httpx.post(
            f"{server.url}/api/auth/login", json={"username": "carol", "password": "first-password-1"}
        ).status_code
        == 401
    )
    ok = httpx.post(
        f"{server.url}/api/auth/login", json={"username": "carol", "password": "second-password-2"}
    )
    assert ok.status_code == 200
    short = server.myx("user", "passwd", "carol", "--password", "short", check=False)
    assert short.returncode != 0
    assert "at least 8" in short.stderr
