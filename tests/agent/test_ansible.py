"""sync_bundle and execute_ansible on a real agent, running the venv's real ansible-playbook."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.agentproc import AgentProcess, RpcFailure

PY = sys.executable
ANSIBLE_PLAYBOOK = str(Path(PY).parent / "ansible-playbook")
INVALID_PARAMS = -32602
TOOL = "deployment-tool"

HELLO = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: greet
      ansible.builtin.debug:
        msg: "hello {{ who }}"
"""
FAIL = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: fail on purpose
      ansible.builtin.fail:
        msg: "deliberate failure"
"""

pytestmark = pytest.mark.skipif(
    not os.access(ANSIBLE_PLAYBOOK, os.X_OK), reason=f"{ANSIBLE_PLAYBOOK} is not installed"
)


# --------------------------------------------------------------------------------------------
# Bundles


def tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_entry(name: str, text: str, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def dir_entry(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def link_entry(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def tool_entries(scratch: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """A small deployment tool: two playbooks, a local inventory, an ansible.cfg using *scratch*."""
    cfg = (
        "[defaults]\n"
        f"local_tmp = {scratch}/ansible-local\n"
        f"remote_tmp = {scratch}/ansible-remote\n"
        "retry_files_enabled = False\n"
    )
    return [
        dir_entry("playbooks"),
        file_entry("playbooks/hello.yml", HELLO),
        file_entry("playbooks/fail.yml", FAIL),
        dir_entry("inventory"),
        file_entry(
            "inventory/localhost.ini",
            f"localhost ansible_connection=local ansible_python_interpreter={PY}\n",
        ),
        file_entry("ansible.cfg", cfg),
        file_entry("scripts/check.sh", "#!/bin/sh\necho ok\n", mode=0o4777),
    ]


def sync(agent: AgentProcess, data: bytes, sha256: str | None = None, name: str = TOOL) -> Any:
    return agent.call(
        "sync_bundle",
        name=name,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        data=base64.b64encode(data).decode(),
    )


def invalid_params(call: Callable[[], Any]) -> str:
    with pytest.raises(RpcFailure) as info:
        call()
    assert info.value.code == INVALID_PARAMS, info.value
    return str(info.value.message)


@pytest.fixture(scope="module")
def tool_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Path]]:
    """One agent with the tool bundle synced (tests must leave the bundle as they found it)."""
    root = tmp_path_factory.mktemp("ansible")
    tool = root / "tool"
    agent = AgentProcess(root / "agent", deployment_tool_dir=str(tool), ansible_playbook=ANSIBLE_PLAYBOOK)
    agent.start()
    assert sync(agent, tar_gz(tool_entries(root)))["status"] == "updated"
    yield agent, tool
    agent.stop()


def test_sync_installs_then_skips_the_same_hash(
    make_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    tool = tmp_path / "opt" / "tool"
    agent = make_agent(deployment_tool_dir=str(tool), ansible_playbook=ANSIBLE_PLAYBOOK)
    data = tar_gz(tool_entries(tmp_path))
    digest = hashlib.sha256(data).hexdigest()

    first = sync(agent, data)
    assert first == {"status": "updated", "sha256": digest, "files": 5}
    assert (tool / "playbooks" / "hello.yml").read_text() == HELLO
    assert (tool / ".bundle-sha256").read_text().strip() == digest
    # Set-id and group/other write bits are dropped, the executable bits kept.
    assert (tool / "scripts" / "check.sh").stat().st_mode & 0o7777 == 0o755
    before = tool.stat()

    second = sync(agent, data, sha256=digest.upper())
    assert second == {"status": "unchanged", "sha256": digest}
    after = tool.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in tool.parent.iterdir()) == ["tool"]  # no staging leftovers


def test_sync_replaces_the_whole_dir(make_agent: Callable[..., AgentProcess], tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    agent = make_agent(deployment_tool_dir=str(tool), ansible_playbook=ANSIBLE_PLAYBOOK)
    sync(agent, tar_gz(tool_entries(tmp_path)))
    newer = tar_gz([file_entry("playbooks/only.yml", HELLO)])
    assert sync(agent, newer)["files"] == 1
    assert sorted(str(p.relative_to(tool)) for p in tool.rglob("*")) == [
        ".bundle-sha256",
        "playbooks",
        "playbooks/only.yml",
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tool")) == []


def test_sync_wrong_sha256(make_agent: Callable[..., AgentProcess], tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    agent = make_agent(deployment_tool_dir=str(tool))
    data = tar_gz(tool_entries(tmp_path))
    message = invalid_params(lambda: sync(agent, data, sha256="0" * 64))
    assert "sha256 mismatch" in message
    assert not tool.exists()


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (file_entry("../evil", "pwned"), "outside the bundle"),
        (file_entry("playbooks/../../evil", "pwned"), "outside the bundle"),
        (file_entry("/tmp/evil-absolute", "pwned"), "absolute path"),
        (link_entry("evil-link", "/etc/passwd", tarfile.SYMTYPE), "symbolic link"),
        (link_entry("evil-hard", "/etc/passwd", tarfile.LNKTYPE), "hard link"),
        (link_entry("evil-fifo", "", tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_sync_refuses_unsafe_entries(
    tool_agent: tuple[AgentProcess, Path], entry: tuple[tarfile.TarInfo, bytes | None], why: str
) -> None:
    agent, tool = tool_agent
    installed = (tool / ".bundle-sha256").read_text()
    data = tar_gz([file_entry("playbooks/new.yml", HELLO), entry])
    message = invalid_params(lambda: sync(agent, data))
    assert why in message
    assert repr(entry[0].name) in message
    # Nothing written outside, and the installed bundle untouched.
    assert not (tool.parent / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()
    assert (tool / ".bundle-sha256").read_text() == installed
    assert not (tool / "playbooks" / "new.yml").exists()
    assert [p.name for p in tool.parent.iterdir() if p.name.startswith(".tool")] == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"this is not gzip", "not a valid .tar.gz"),
        (tar_gz([file_entry("a.yml", HELLO)])[:-12], "not a valid .tar.gz"),  # truncated
        (tar_gz([]), "holds no files"),
    ],
)
def test_sync_refuses_corrupt_archives(tool_agent: tuple[AgentProcess, Path], data: bytes, why: str) -> None:
    agent, tool = tool_agent
    installed = (tool / ".bundle-sha256").read_text()
    assert why in invalid_params(lambda: sync(agent, data))
    assert (tool / ".bundle-sha256").read_text() == installed
    assert [p.name for p in tool.parent.iterdir() if p.name.startswith(".tool")] == []


def test_sync_unknown_bundle(tool_agent: tuple[AgentProcess, Path]) -> None:
    agent, _tool = tool_agent
    data = tar_gz([file_entry("a.yml", HELLO)])
    assert "unknown bundle 'other'" in invalid_params(lambda: sync(agent, data, name="other"))
    assert invalid_params(lambda: sync(agent, data, name="../x"))  # the name pattern, at bind time


# --------------------------------------------------------------------------------------------
# Playbooks


def run_playbook(agent: AgentProcess, playbook: str, **params: Any) -> dict[str, Any]:
    started = agent.call("execute_ansible", playbook=playbook, **params)
    assert started["status"] == "running"
    return agent.follow(started["command_id"], deadline=120)


def test_execute_ansible_hello_world(tool_agent: tuple[AgentProcess, Path]) -> None:
    agent, _tool = tool_agent
    reply = run_playbook(agent, "playbooks/hello.yml", extra_vars={"who": "world"})
    output = reply["output"].decode()
    assert reply["result"]["status"] == "success", output
    assert "hello world" in output
    assert "ok=1" in output
    assert "\x1b[" not in output  # no colours in stored logs


def test_execute_ansible_failing_playbook(tool_agent: tuple[AgentProcess, Path]) -> None:
    agent, _tool = tool_agent
    reply = run_playbook(agent, "playbooks/fail.yml")
    assert reply["result"]["status"] == "failed"
    assert reply["result"]["return_code"] == 2
    assert "deliberate failure" in reply["output"].decode()


def test_execute_ansible_large_extra_vars_go_through_a_file(tool_agent: tuple[AgentProcess, Path]) -> None:
    agent, _tool = tool_agent
    padding = "x" * (100 << 10)  # beyond the inline limit
    reply = run_playbook(agent, "playbooks/hello.yml", extra_vars={"who": "big world", "padding": padding})
    assert reply["result"]["status"] == "success", reply["output"].decode()
    assert "hello big world" in reply["output"].decode()
    vars_dir = agent.workdir / "state" / "ansible-vars"
    assert not vars_dir.exists() or list(vars_dir.iterdir()) == []  # removed once finished


def test_execute_ansible_is_idempotent_on_command_id(tool_agent: tuple[AgentProcess, Path]) -> None:
    agent, _tool = tool_agent
    params = {"playbook": "playbooks/hello.yml", "extra_vars": {"who": "once"}, "command_id": "ansible-once"}
    first = agent.call("execute_ansible", **params)
    again = agent.call("execute_ansible", **params)
    assert first["command_id"] == again["command_id"] == "ansible-once"
    reply = agent.follow("ansible-once", deadline=120)
    assert reply["output"].decode().count("hello once") == 1
    with pytest.raises(RpcFailure) as info:
        agent.call("execute_ansible", **{**params, "extra_vars": {"who": "twice"}})
    assert info.value.code == -32004


@pytest.mark.parametrize(
    "playbook",
    [
        "../etc/passwd",
        "/etc/passwd",
        "playbooks/../../tool-outside.yml",
        "playbooks",
        "playbooks/missing.yml",
        ".",
    ],
)
def test_execute_ansible_playbook_confined_to_the_tool_dir(
    tool_agent: tuple[AgentProcess, Path], playbook: str
) -> None:
    agent, _tool = tool_agent
    message = invalid_params(lambda: agent.call("execute_ansible", playbook=playbook))
    assert repr(playbook) in message
    assert "must be a file inside the deployment tool dir" in message
    assert "sync_bundle" in message


def test_execute_ansible_symlink_out_of_the_tool_dir_refused(tool_agent: tuple[AgentProcess, Path]) -> None:
    agent, tool = tool_agent
    link = tool / "playbooks" / "sneaky.yml"
    link.symlink_to("/etc/passwd")
    try:
        message = invalid_params(lambda: agent.call("execute_ansible", playbook="playbooks/sneaky.yml"))
        assert "must be a file inside the deployment tool dir" in message
    finally:
        link.unlink()


def test_execute_ansible_without_ansible_playbook(
    make_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    tool = tmp_path / "tool"
    agent = make_agent(
        deployment_tool_dir=str(tool), ansible_playbook=str(tmp_path / "nowhere" / "ansible-playbook")
    )
    sync(agent, tar_gz(tool_entries(tmp_path)))
    message = invalid_params(lambda: agent.call("execute_ansible", playbook="playbooks/hello.yml"))
    assert "ansible-playbook is not installed on this host" in message
    assert "set ansible_playbook in the config" in message
    assert agent.call("list_commands")["commands"] == []
