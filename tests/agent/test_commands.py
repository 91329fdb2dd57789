"""Running commands on a real agent: output through offsets, kill semantics, limits, idempotency."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import textwrap
import time
from pathlib import Path

import pytest

from myx.protocol.output import chunk_bytes
from support.agentproc import AgentProcess, RpcFailure

PY = sys.executable


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie waits only for its (new) parent to reap it


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_success_and_failure_results(agent: AgentProcess) -> None:
    ok = agent.run("sh", "-c", "echo out; echo err >&2")
    assert ok["is_final"]
    result = ok["result"]
    assert result["status"] == "success"
    assert result["success"] is True
    assert result["return_code"] == 0
    assert result["stdout"] == "out\n"
    assert result["stderr"] == "err\n"
    assert result["started_at"]
    assert result["finished_at"]
    assert result["duration"] >= 0
    assert result["truncated"] is False
    bad = agent.run("sh", "-c", "exit 7")
    assert bad["result"]["status"] == "failed"
    assert bad["result"]["return_code"] == 7


def test_ten_megabytes_read_back_byte_exact_in_random_chunk_sizes(agent: AgentProcess) -> None:
    # Binary output (not UTF-8) exercises the base64 path; the seed makes a failure reproducible.
    size = 10 * 1024 * 1024
    script = f"import random,sys; sys.stdout.buffer.write(random.Random(7).randbytes({size}))"
    expected = random.Random(7).randbytes(size)
    started = agent.call("execute_command", command=PY, args=["-c", script])
    rng = random.Random(42)
    offset, received = 0, bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        limit = rng.choice([1, 7, 4096, 65536, rng.randint(1, 1 << 20)])
        reply = agent.call(
            "get_command_log", command_id=started["command_id"], offset=offset, limit=limit, wait=2
        )
        data = b"".join(chunk_bytes(c) for c in reply["chunks"])
        assert len(data) <= limit
        assert reply["new_offset"] == offset + len(data)
        # the same offset always yields the same following bytes (a read may stop a few bytes
        # short of a character that is still being written, never differ)
        again = agent.call(
            "get_command_log", command_id=started["command_id"], offset=offset, limit=len(data) or 1
        )
        repeat = b"".join(chunk_bytes(c) for c in again["chunks"])
        assert repeat == data[: len(repeat)]
        assert len(repeat) >= len(data) - 3
        received += data
        offset = reply["new_offset"]
        if reply["is_final"]:
            break
    assert reply["is_final"]
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert reply["result"]["stdout_bytes"] == size


def test_text_output_with_multibyte_characters_is_never_split(agent: AgentProcess) -> None:
    text = "汉字と😀é" * 5000
    reply = agent.run(PY, "-c", f"import sys; sys.stdout.write({text!r})")
    assert reply["stdout"].decode("utf-8") == text
    assert all(c.get("encoding") is None for c in reply["all_chunks"])


def test_stdout_and_stderr_order_is_preserved(agent: AgentProcess) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        for i in range(20):
            stream = sys.stdout if i % 2 == 0 else sys.stderr
            stream.write(f"line {i}\\n"); stream.flush()
            time.sleep(0.02)
        """
    )
    reply = agent.run(PY, "-c", script)
    lines = [
        (c["stream"], line) for c in reply["all_chunks"] for line in chunk_bytes(c).decode().splitlines()
    ]
    assert lines == [("stdout" if i % 2 == 0 else "stderr", f"line {i}") for i in range(20)]


def test_timeout_kills_the_whole_tree_including_a_setsid_grandchild(
    agent: AgentProcess, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, subprocess, time
        group = subprocess.Popen(["sleep", "300"])
        escaped = subprocess.Popen(["setsid", "sleep", "300"])
        open({str(pids)!r}, "w").write(f"{{group.pid}} {{escaped.pid}}")
        print("started", flush=True)
        time.sleep(300)
        """
    )
    reply = agent.run(PY, "-c", script, timeout=1.5)
    result = reply["result"]
    assert result["status"] == "timeout"
    assert result["success"] is False
    assert "timed out" in result["error"]
    assert reply["stdout"] == b"started\n"
    for pid in map(int, pids.read_text().split()):
        assert _wait_gone(pid), f"process {pid} survived the timeout"


def test_grandchild_that_ignores_sigterm_is_killed_after_the_grace(
    agent: AgentProcess, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = f"trap '' TERM; sh -c 'trap \"\" TERM; echo $$ > {pidfile}; sleep 300'; sleep 300"
    reply = agent.run("sh", "-c", script, timeout=1)
    assert reply["result"]["status"] == "timeout"
    assert _wait_gone(int(pidfile.read_text()))


def test_cancel(agent: AgentProcess) -> None:
    started = agent.call("execute_command", command="sleep", args=["300"])
    cancelled = agent.call("cancel_command", command_id=started["command_id"])
    assert cancelled["cancelled"] is True
    reply = agent.follow(started["command_id"])
    assert reply["result"]["status"] == "cancelled"
    assert reply["result"]["signal"] == "SIGTERM"
    again = agent.call("cancel_command", command_id=started["command_id"])
    assert again == {"command_id": started["command_id"], "cancelled": False, "status": "cancelled"}


def test_unknown_command_is_32002(agent: AgentProcess) -> None:
    for method in ("get_command_log", "cancel_command"):
        with pytest.raises(RpcFailure) as info:
            agent.call(method, command_id="no-such-command")
        assert info.value.code == -32002


def test_retry_with_the_same_command_id_never_runs_twice(agent: AgentProcess, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    params = {"command": "sh", "args": ["-c", f"echo run >> {counter}"], "command_id": "idem-1"}
    first = agent.call("execute_command", **params)
    agent.follow("idem-1")
    second = agent.call("execute_command", **params)
    assert first["command_id"] == second["command_id"] == "idem-1"
    assert second["status"] == "success"
    assert counter.read_text() == "run\n"
    with pytest.raises(RpcFailure) as info:
        agent.call("execute_command", command="true", command_id="idem-1")
    assert info.value.code == -32004


def test_concurrency_limit_is_busy(make_agent) -> None:  # type: ignore[no-untyped-def]
    proc = make_agent(max_concurrent_commands=2)
    ids = [proc.call("execute_command", command="sleep", args=["300"])["command_id"] for _ in range(2)]
    with pytest.raises(RpcFailure) as info:
        proc.call("execute_command", command="true")
    assert info.value.code == -32003
    proc.call("cancel_command", command_id=ids[0])
    proc.follow(ids[0])
    assert proc.run("true")["result"]["status"] == "success"
    proc.call("cancel_command", command_id=ids[1])


def test_output_cap_marks_truncation(make_agent) -> None:  # type: ignore[no-untyped-def]
    proc = make_agent(max_output_bytes=1000)
    reply = proc.run(PY, "-c", "import sys; sys.stdout.write('x' * 5000)")
    result = reply["result"]
    assert result["status"] == "success"
    assert result["truncated"] is True
    assert result["dropped_bytes"] == 4000
    assert result["output_bytes"] == 1000
    assert reply["output"] == b"x" * 1000


def test_long_poll_returns_when_output_arrives(agent: AgentProcess) -> None:
    started = agent.call("execute_command", command="sh", args=["-c", "sleep 0.5; echo late"])
    began = time.monotonic()
    reply = agent.call("get_command_log", command_id=started["command_id"], offset=0, wait=20)
    assert reply["log_data"] == "late\n" or reply["is_final"]
    assert time.monotonic() - began < 15


def test_missing_program_fails_with_127(agent: AgentProcess) -> None:
    reply = agent.run("/nonexistent/program", "x")
    assert reply["result"]["status"] == "failed"
    assert reply["result"]["return_code"] == 127
    assert b"/nonexistent/program" in reply["stderr"]


def test_shell_mode_passes_args_as_positional_parameters(agent: AgentProcess) -> None:
    hostile = "a b; echo injected"
    reply = agent.run('printf "%s|" "$@"', hostile, "$(id)", shell=True)
    assert reply["stdout"] == f"{hostile}|$(id)|".encode()
    argv = agent.run("printf", "%s", "$(id); echo no")
    assert argv["stdout"] == b"$(id); echo no"


def test_stdin_env_and_cwd(agent: AgentProcess, tmp_path: Path) -> None:
    reply = agent.run(
        "sh",
        "-c",
        'cat; echo "$GREETING"; pwd',
        stdin="from stdin\n",
        env={"GREETING": "hi"},
        cwd=str(tmp_path),
    )
    assert reply["stdout"] == f"from stdin\nhi\n{tmp_path}\n".encode()
    with pytest.raises(RpcFailure) as info:
        agent.call("execute_command", command="true", env={"A=B": "x"})
    assert info.value.code == -32602
    with pytest.raises(RpcFailure):
        agent.call("execute_command", command="echo", args=["nul\x00byte"])


def test_execute_script(agent: AgentProcess) -> None:
    reply = agent.call(
        "execute_script", script="import sys\nprint('py', sys.argv[1:])\n", interpreter=PY, args=["a"]
    )
    done = agent.follow(reply["command_id"])
    assert done["stdout"] == b"py ['a']\n"
    sh = agent.call("execute_script", script='echo "sh $1"; exit 3\n', args=["b"])
    done = agent.follow(sh["command_id"])
    assert done["stdout"] == b"sh b\n"
    assert done["result"]["return_code"] == 3


def test_list_commands(agent: AgentProcess) -> None:
    started = agent.call("execute_command", command="sleep", args=["300"], command_id="listed-1")
    running = agent.call("list_commands", include_finished=False)["commands"]
    assert "listed-1" in [c["command_id"] for c in running]
    assert all(c["status"] == "running" for c in running)
    agent.call("cancel_command", command_id=started["command_id"])
    agent.follow("listed-1")
    everything = agent.call("list_commands")["commands"]
    assert {"listed-1"} <= {c["command_id"] for c in everything}


def test_offset_past_the_end_is_invalid(agent: AgentProcess) -> None:
    reply = agent.run("echo", "hi")
    with pytest.raises(RpcFailure) as info:
        agent.call("get_command_log", command_id=reply["command_id"], offset=1000)
    assert info.value.code == -32602


def test_spool_files_are_private(agent: AgentProcess) -> None:
    reply = agent.run("echo", "secret")
    spool = Path(agent.workdir, "state", "commands", reply["command_id"])
    for path in [spool, *spool.iterdir()]:
        assert path.stat().st_mode & 0o077 == 0, path
    assert os.stat(Path(agent.workdir, "state")).st_mode & 0o077 == 0


def test_a_character_still_being_written_is_held_back_whole(tmp_path: Path) -> None:
    """The pipe can hand over the first bytes of a character alone: a read then gets nothing yet,
    never a base64 fragment (seen on a loaded machine), unless its limit asks for fewer bytes."""
    from myx.agent.outputlog import OutputLog
    from myx.agent.runner import Command

    log = OutputLog(str(tmp_path), "c1", 1 << 20)
    log.open_for_append()
    try:
        command = Command("c1", str(tmp_path), log)
        char = "😀".encode()
        log.append("stdout", b"ok " + char[:1])
        assert [c.to_wire() for c in command.read(0, 100)] == [{"stream": "stdout", "data": "ok "}]
        assert command.read(3, 100) == []  # only the character's first byte so far
        log.append("stdout", char[1:3])
        assert command.read(3, 100) == []
        assert command.read(3, 1)[0].to_wire()["encoding"] == "base64"  # asked for one byte
        log.append("stdout", char[3:])
        assert [c.to_wire() for c in command.read(3, 100)] == [{"stream": "stdout", "data": "😀"}]
    finally:
        log.close()
