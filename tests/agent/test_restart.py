"""Results survive agent restarts; a command cut off by a restart is closed with the reason."""

from __future__ import annotations

import time
from pathlib import Path

from support.agentproc import AgentProcess


def test_finished_result_is_readable_after_a_restart(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "a")
    agent.start()
    try:
        before = agent.run("sh", "-c", "echo persisted; echo also >&2; exit 4")
        agent.stop()
        agent.start()
        after = agent.follow(before["command_id"])
        assert after["output"] == before["output"]
        assert after["all_chunks"] == before["all_chunks"]
        for key in ("status", "return_code", "stdout", "stderr", "started_at", "finished_at", "output_bytes"):
            assert after["result"][key] == before["result"][key], key
        listed = agent.call("list_commands")["commands"]
        assert before["command_id"] in [c["command_id"] for c in listed]
    finally:
        agent.stop()


def test_graceful_stop_ends_running_commands_with_a_reason(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "a")
    agent.start()
    try:
        started = agent.call("execute_command", command="sh", args=["-c", "echo begun; sleep 300"])
        time.sleep(0.3)
        agent.stop()
        agent.start()
        reply = agent.follow(started["command_id"])
        assert reply["output"] == b"begun\n"
        assert reply["result"]["status"] == "failed"
        assert "agent stopped" in reply["result"]["error"]
    finally:
        agent.stop()


def test_command_orphaned_by_a_crash_is_killed_and_closed_on_restart(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "a")
    agent.start()
    pidfile = tmp_path / "pid"
    try:
        started = agent.call(
            "execute_command", command="sh", args=["-c", f"echo $$ > {pidfile}; echo hi; sleep 300"]
        )
        deadline = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        agent.kill()  # SIGKILL: no cleanup, the command's process group survives the agent
        assert Path(f"/proc/{pid}").exists()
        agent.start()
        reply = agent.follow(started["command_id"])
        assert reply["output"] == b"hi\n"
        assert reply["result"]["status"] == "failed"
        assert "restarted" in reply["result"]["error"]
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if stat == "Z":
                break
            time.sleep(0.05)
        else:
            assert not Path(f"/proc/{pid}").exists()
    finally:
        agent.stop()


def test_expired_results_are_pruned(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "a", result_retention_seconds=1)
    agent.start()
    try:
        reply = agent.run("echo", "old")
        spool = agent.workdir / "state" / "commands" / reply["command_id"]
        assert spool.exists()
        time.sleep(1.5)
        agent.stop()
        agent.start()
        assert not spool.exists()
        assert reply["command_id"] not in [c["command_id"] for c in agent.call("list_commands")["commands"]]
    finally:
        agent.stop()
