"""The built-in supervisor for hosts without systemd: myx-agent supervise / stop / status / restart.

Every process a test starts is found again through /proc (its command line holds the test's own
config path) and SIGKILLed by pid at the end, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from myx.agent import supervisor
from support.agentproc import AgentProcess

ROOT = Path(__file__).resolve().parents[2]
MODULE = [sys.executable, "-m", "myx.agent.main"]


# --- /proc helpers ------------------------------------------------------------------------------


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ppid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2 :].split()[1])


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# --- one supervised agent -----------------------------------------------------------------------


class Supervised:
    """An agent config (from AgentProcess), a pidfile and a log, driven through the CLI."""

    def __init__(self, workdir: Path, command: list[str], cwd: Path | None = None) -> None:
        self.command = command
        self.cwd = cwd
        self.agent = AgentProcess(workdir / "agent")
        self.agent.write_config()
        self.pidfile = workdir / "supervisor.pid"
        self.log = workdir / "supervisor.log"

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args, "--config", str(self.agent.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
            check=False,
        )

    def supervise(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli(
            "supervise", "--daemon", "--pidfile", str(self.pidfile), "--log", str(self.log), *extra
        )

    def supervisor_pid(self) -> int:
        return int(self.pidfile.read_text())

    def child_pids(self) -> list[int]:
        """The agents run by the supervisor: its children with ' run ' in their command line."""
        sup = self.supervisor_pid()
        return [pid for pid in all_pids() if ppid(pid) == sup and " run " in cmdline(pid)]

    def child_pid(self, timeout: float = 10.0, other_than: int | None = None) -> int:
        found: list[int] = []

        def one_new_child() -> bool:
            found[:] = [pid for pid in self.child_pids() if pid != other_than]
            return len(found) == 1

        wait_for(one_new_child, timeout, "the supervisor's agent child")
        return found[0]

    def processes(self) -> list[int]:
        """Every process started for this agent (supervisor and child): found by the config path."""
        needle = str(self.agent.config_path)
        return [pid for pid in all_pids() if pid != os.getpid() and needle in cmdline(pid)]

    def healthy(self) -> bool:
        if not self.agent.cafile.exists():
            return False
        with contextlib.suppress(httpx.HTTPError, ssl.SSLError, OSError):
            self.agent.reset_client()
            return bool(self.agent.call("health_check")["status"] == "ok")
        return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        try:
            wait_for(self.healthy, timeout, "health_check")
        except AssertionError:
            raise AssertionError(f"agent not healthy; log:\n{self.log_text()[-3000:]}") from None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.agent.close_client()
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def make_supervised(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    made: list[Supervised] = []

    def make(command: list[str] = MODULE, cwd: Path | None = None) -> Supervised:
        sup = Supervised(tmp_path / f"s{len(made)}", command, cwd)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.cleanup()


# --- pure functions -----------------------------------------------------------------------------


def test_restart_delay_doubles_up_to_30_s_and_resets_after_a_stable_run() -> None:
    delays, delay = [], 0.0
    for _ in range(8):
        delay = supervisor.restart_delay(delay, uptime=0.5)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert supervisor.restart_delay(30, uptime=59) == 30
    assert supervisor.restart_delay(30, uptime=60) == 1


def test_child_command_follows_how_the_supervisor_was_started(tmp_path: Path) -> None:
    config = "/etc/myx-agent/config.json"
    module = supervisor.child_command(config, "/x/myx/agent/main.py", "/usr/bin/python3", False)
    assert module == ["/usr/bin/python3", "-m", "myx.agent.main", "run", "--config", config]
    # A zipapp is recognised by its suffix, or by its content when renamed; the path becomes absolute.
    named = supervisor.child_command(config, "dist/myx-agent.pyz", "/usr/bin/python3", True)
    assert named == [
        "/usr/bin/python3",
        "-I",
        os.path.abspath("dist/myx-agent.pyz"),
        "run",
        "--config",
        config,
    ]
    renamed = tmp_path / "myx-agent"
    with zipfile.ZipFile(renamed, "w") as archive:
        archive.writestr("__main__.py", "")
    assert supervisor.child_command(config, str(renamed), "py", False)[1] == str(renamed)


def test_pidfile_is_written_0644_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    pidfile = tmp_path / "agent.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # alive, but not a supervisor: stale
    old_umask = os.umask(0o077)
    try:
        supervisor.write_pidfile(str(pidfile), 4242)
    finally:
        os.umask(old_umask)
    assert pidfile.read_text() == "4242\n"
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["agent.pid"]  # no temporary file left
    supervisor.remove_pidfile(str(pidfile), 1)  # not ours: kept
    assert pidfile.exists()
    supervisor.remove_pidfile(str(pidfile), 4242)
    assert not pidfile.exists()


def test_pidfile_of_a_live_supervisor_is_not_replaced(tmp_path: Path) -> None:
    # Anything with a "supervise" argument counts as a supervisor; a path containing it does not.
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "supervise"])
    lookalike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "/tmp/supervise/x"])
    try:
        wait_for(lambda: "supervise" in cmdline(fake.pid) and "x" in cmdline(lookalike.pid), 10, "exec")
        pidfile = tmp_path / "agent.pid"
        pidfile.write_text(f"{fake.pid}\n")
        with pytest.raises(supervisor.AlreadyRunning):
            supervisor.write_pidfile(str(pidfile), 4242)
        assert pidfile.read_text() == f"{fake.pid}\n"
        assert not supervisor.is_supervisor(lookalike.pid)
    finally:
        for proc in (fake, lookalike):
            proc.kill()
            proc.wait()


# --- the real thing -----------------------------------------------------------------------------


def test_daemon_restarts_the_agent_and_is_driven_by_the_pidfile(
    make_supervised: Callable[..., Supervised],
) -> None:
    sup = make_supervised()
    started = time.monotonic()
    result = sup.supervise()
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 8  # returns once the pidfile exists, not when the agent is up
    assert sup.pidfile.exists()
    assert stat.S_IMODE(sup.pidfile.stat().st_mode) == 0o644
    supervisor_pid = sup.supervisor_pid()
    assert f"pid {supervisor_pid}" in result.stdout
    assert ppid(supervisor_pid) != os.getpid()  # detached: not our child
    sup.wait_healthy()

    status = sup.cli("status", "--pidfile", str(sup.pidfile))
    assert (status.returncode, status.stdout.strip()) == (0, f"running (pid {supervisor_pid})")

    again = sup.supervise()
    assert again.returncode == 1
    assert f"already running (pid {supervisor_pid}" in again.stderr
    assert sup.supervisor_pid() == supervisor_pid

    # A crash (kill -9) is followed by a restart after the 1 s back-off.
    first = sup.child_pid()
    os.kill(first, signal.SIGKILL)
    second = sup.child_pid(timeout=10, other_than=first)
    sup.wait_healthy(timeout=10)
    assert "code=-9 (signal SIGKILL)" in sup.log_text()

    # SIGHUP: a new child right away (what an upgrade that swapped the pyz uses).
    restart = sup.cli("restart", "--pidfile", str(sup.pidfile))
    assert restart.returncode == 0, restart.stderr
    third = sup.child_pid(timeout=10, other_than=second)
    sup.wait_healthy(timeout=10)
    assert third not in (first, second)

    stop = sup.cli("stop", "--pidfile", str(sup.pidfile))
    assert stop.returncode == 0, stop.stderr
    assert sup.processes() == []
    assert not sup.pidfile.exists()
    log = sup.log_text()
    assert log.count("child started pid=") == 3
    assert "supervisor stopped on SIGTERM" in log

    status = sup.cli("status", "--pidfile", str(sup.pidfile))
    assert (status.returncode, status.stdout.strip()) == (3, "not running")
    stop = sup.cli("stop", "--pidfile", str(sup.pidfile))
    assert (stop.returncode, "not running" in stop.stdout) == (0, True)
    assert sup.cli("restart", "--pidfile", str(sup.pidfile)).returncode == 3


def test_broken_config_fails_before_daemonizing(make_supervised: Callable[..., Supervised]) -> None:
    sup = make_supervised()
    del sup.agent.config["rpc_port"]
    sup.agent.write_config()
    result = sup.supervise()
    assert result.returncode == 2
    assert "'rpc_port' is missing" in result.stderr
    assert not sup.pidfile.exists()
    assert sup.processes() == []


def test_stale_pidfile_is_replaced_and_foreground_mode_stops_on_sigterm(
    make_supervised: Callable[..., Supervised],
) -> None:
    sup = make_supervised()
    sup.pidfile.write_text("999999999\n")  # no such process
    args = ["supervise", "--pidfile", str(sup.pidfile), "--log", str(sup.log)]
    config = ["--config", str(sup.agent.config_path)]
    proc = subprocess.Popen([*sup.command, *args, *config], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: sup.pidfile.read_text().strip() == str(proc.pid), 10, "the new pidfile")
        sup.wait_healthy()
        child = sup.child_pid()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert not Path(f"/proc/{child}").exists()
        assert not sup.pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the zipapp ---------------------------------------------------------------------------------


def _has_supervisor(pyz: Path) -> bool:
    with zipfile.ZipFile(pyz) as archive:
        return "myx/agent/supervisor.py" in archive.namelist()


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/myx-agent.pyz (scripts/test.sh builds it); built here if missing or older than this."""
    built = Path(os.environ.get("MYX_AGENT_PYZ", ROOT / "dist" / "myx-agent.pyz"))
    if not built.exists() or not _has_supervisor(built):
        built = tmp_path_factory.mktemp("pyz") / "myx-agent.pyz"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "build_agent_pyz.py"), "--out", str(built)], check=True
        )
    return built


def _oldest_python() -> str:
    """python3.9 (the agent's floor) when this machine has a working one, else this interpreter."""
    import shutil

    for candidate in (
        shutil.which("python3.9"),
        *sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3.9")),
    ):
        if candidate and subprocess.run([str(candidate), "-c", "pass"], capture_output=True).returncode == 0:
            return str(candidate)
    return sys.executable


def test_zipapp_supervises_itself(make_supervised: Callable[..., Supervised], pyz: Path) -> None:
    # Started as `python3 -I myx-agent.pyz` from the archive's folder: a relative path, on purpose.
    sup = make_supervised(command=[_oldest_python(), "-I", pyz.name], cwd=pyz.parent)
    result = sup.supervise()
    assert result.returncode == 0, result.stderr
    sup.wait_healthy()
    child = cmdline(sup.child_pid()).split()
    assert child[1] == "-I"
    assert os.path.realpath(child[2]) == str(pyz.resolve())
    assert child[3:] == ["run", "--config", str(sup.agent.config_path)]
    stop = sup.cli("stop", "--pidfile", str(sup.pidfile))
    assert stop.returncode == 0, stop.stderr
    assert sup.processes() == []
    assert not sup.pidfile.exists()
