"""The built-in supervisor: keeps ``myx-agent run`` alive on hosts without systemd.

Containers, WSL and non-root installs have no service manager the installer can rely on, so
``myx-agent supervise`` plays the part of a systemd unit with ``Restart=always``: it runs the agent
as a child, restarts it with an exponential back-off whenever it exits, and is driven through a
pidfile by ``stop``, ``status`` and ``restart`` (SIGHUP: start the child again from whatever
``myx-agent.pyz`` is on disk now, which is how a self-upgrade takes effect).

Only the standard library, no threads: signal handlers set flags that one loop polls every
``POLL_SECONDS``, which bounds the reaction time without a busy loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import time
import zipfile
from types import FrameType
from typing import List, Optional, Tuple

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3  # LSB init-script convention for "program is not running"

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
# A child that stayed up this long was healthy: a later crash starts the back-off over at 1 s.
STABLE_SECONDS = 60.0
CHILD_STOP_SECONDS = 30.0
DAEMON_READY_SECONDS = 10.0
POLL_SECONDS = 0.2
LOG_MODE = 0o640  # agent logs hold no secrets, but there is no reason to show them to every user
PIDFILE_MODE = 0o644  # readable by anyone, like the pidfiles of system daemons
SUPERVISE_ARG = b"supervise"


class AlreadyRunning(Exception):
    """The pidfile names a live supervisor."""

    def __init__(self, pid: int, pidfile: str) -> None:
        self.pid = pid
        super().__init__(f"already running (pid {pid}, pidfile {pidfile})")


# --- the child's command line -------------------------------------------------------------------


def is_zipapp(path: str) -> bool:
    """True when this process was started as ``python3 myx-agent.pyz ...``."""
    return path.endswith(".pyz") or (os.path.isfile(path) and zipfile.is_zipfile(path))


def child_command(config_path: str, argv0: str, executable: str, isolated: bool) -> List[str]:
    """``run --config CONFIG`` started the same way as this process.

    From the zipapp the child runs the archive *by path*, so after an upgrade swapped the file a
    restart picks up the new version.  The path is made absolute because the daemon chdirs to /.
    ``-I`` is kept: an agent started isolated must not start to honour PYTHONPATH in its child.
    """
    flags = ["-I"] if isolated else []
    entry = [os.path.abspath(argv0)] if is_zipapp(argv0) else ["-m", "myx.agent.main"]
    return [executable, *flags, *entry, "run", "--config", config_path]


def restart_delay(previous: float, uptime: float) -> float:
    """Seconds to wait before the next start: 1, 2, 4 ... up to 30; 1 again after a stable run.

    *previous* is the last delay (0 before the first crash or after a deliberate restart).
    """
    if previous <= 0 or uptime >= STABLE_SECONDS:
        return BACKOFF_FIRST_SECONDS
    return min(previous * 2, BACKOFF_MAX_SECONDS)


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "code=none (not started)"
    if code < 0:
        try:
            return f"code={code} (signal {signal.Signals(-code).name})"
        except ValueError:
            return f"code={code} (signal {-code})"
    return f"code={code}"


# --- pidfile and /proc --------------------------------------------------------------------------


def read_pidfile(path: str) -> Optional[int]:
    """The pid in *path*, or None when the file is missing, empty or garbage."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_supervisor(pid: int) -> bool:
    """Is *pid* a live ``myx-agent supervise`` process?

    A pid alone is not enough: after a reboot or a crash the pidfile may name a recycled pid.
    The argument must be exactly ``supervise``: a config path such as
    ``/tmp/test_supervise/config.json`` in the child's command line must not match.
    A zombie has an empty cmdline, so it never matches.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        # The process exists but hides its cmdline (hidepid): assume the worst rather than
        # starting a second supervisor next to it.
        return True
    return SUPERVISE_ARG in args


def running_supervisor(pidfile: str) -> Optional[int]:
    pid = read_pidfile(pidfile)
    return pid if pid is not None and is_supervisor(pid) else None


def _identity(pid: int) -> Optional[Tuple[str, int]]:
    """(state, start time) of *pid* from /proc/PID/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


def _same_process_alive(pid: int, start: Optional[int]) -> bool:
    """Still the same process (start time unchanged, so not a recycled pid) and not a zombie?"""
    ident = _identity(pid)
    if ident is None or ident[0] in ("Z", "X"):
        return False
    return start is None or ident[1] == start


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_pidfile(path: str, pid: int) -> None:
    """Create *path* holding *pid*, atomically and with mode 0644; replace a stale one.

    The content is written to a temporary file first and then hard-linked into place: readers
    never see a half-written pid, and ``link`` fails if the file exists, so of two supervisors
    starting at the same moment only one wins (the other sees a live supervisor and refuses).
    A filesystem without hard links falls back to ``rename`` (still atomic, not exclusive).
    """
    tmp = f"{path}.{pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PIDFILE_MODE)
    try:
        os.fchmod(fd, PIDFILE_MODE)  # the caller's umask must not decide who can read it
        os.write(fd, f"{pid}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        for _attempt in range(3):
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                other = running_supervisor(path)
                if other is not None and other != pid:
                    raise AlreadyRunning(other, path) from None
                _unlink(path)  # stale: its process is gone or is something else now
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                    raise
                os.replace(tmp, path)
                return
        raise OSError(errno.EEXIST, "the pidfile keeps reappearing", path)
    finally:
        _unlink(tmp)


def remove_pidfile(path: str, pid: int) -> None:
    """Remove *path* only if it still names *pid*: never delete a newer supervisor's file."""
    if read_pidfile(path) == pid:
        _unlink(path)


# --- the log file -------------------------------------------------------------------------------


def open_log(path: str) -> int:
    """An append-mode fd on the log, created if missing.

    Opened again for every child and every event line, so a log moved away by logrotate is
    followed without a copytruncate.
    """
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)


def log_event(path: str, message: str) -> None:
    """Append one timestamped line; a log that cannot be written must not stop the supervisor."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    line = f"{stamp} INFO myx.agent.supervisor: {message}".replace("\n", " | ") + "\n"
    try:
        fd = open_log(path)
    except OSError:
        _write_stderr(line)
        return
    try:
        # One write() with O_APPEND: lines of the child and of the supervisor never interleave.
        os.write(fd, line.encode("utf-8", "replace"))
    except OSError:
        _write_stderr(line)
    finally:
        os.close(fd)


def _write_stderr(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# --- the supervisor loop ------------------------------------------------------------------------


class Supervisor:
    """Runs *command* and restarts it whenever it exits, until SIGTERM or SIGINT."""

    def __init__(self, command: List[str], log_path: str) -> None:
        self.command = command
        self.log_path = log_path
        self.stop_signal: Optional[int] = None
        self.restart_requested = False

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_restart)

    def _on_stop(self, signum: int, frame: Optional[FrameType]) -> None:
        self.stop_signal = signum

    def _on_restart(self, signum: int, frame: Optional[FrameType]) -> None:
        self.restart_requested = True

    def stopping(self) -> bool:
        # A method, not an inline test: the flag changes under the loop's feet (signal handlers).
        return self.stop_signal is not None

    def log(self, message: str) -> None:
        log_event(self.log_path, message)

    def run(self) -> int:
        self.log(f"supervisor started pid={os.getpid()} command={' '.join(self.command)}")
        delay = 0.0
        while not self.stopping():
            self.restart_requested = False
            started = time.monotonic()
            child = self._start_child()
            try:
                code, exited = self._watch(child) if child is not None else (None, True)
            finally:
                if child is not None and child.poll() is None:
                    child.kill()  # only on an unexpected error: never leave an orphaned agent
                    child.wait()
            uptime = time.monotonic() - started
            pending = self.stopping() or self.restart_requested
            if exited:  # on its own (or never started), not stopped by us
                pid = child.pid if child is not None else 0
                next_start = ""
                if not pending:
                    delay = restart_delay(delay, uptime)
                    next_start = f"; next start in {delay:g} s"
                self.log(f"child exited pid={pid} {describe_exit(code)} after {uptime:.1f} s{next_start}")
            if self.stopping():
                break
            if self.restart_requested:
                delay = 0.0  # a deliberate restart (upgrade) gets a fresh back-off
                self.log("SIGHUP: starting the child again")
                continue
            self._pause(delay)
        name = signal.Signals(self.stop_signal).name if self.stop_signal else "?"
        self.log(f"supervisor stopped on {name} pid={os.getpid()}")
        return EXIT_OK

    def _start_child(self) -> Optional[subprocess.Popen[bytes]]:
        try:
            log_fd: Optional[int] = open_log(self.log_path)
        except OSError as exc:
            # Keep the agent up even if its log is unwritable; its output goes where ours goes.
            self.log(f"cannot open the log for the child: {exc.strerror}")
            log_fd = None
        try:
            child = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT if log_fd is not None else None,
            )
        except OSError as exc:
            self.log(f"cannot start the child: {exc}")
            return None
        finally:
            if log_fd is not None:
                os.close(log_fd)
        self.log(f"child started pid={child.pid}")
        return child

    def _watch(self, child: subprocess.Popen[bytes]) -> Tuple[int, bool]:
        """Wait until the child exits, or stop it when a signal asks for that.

        Returns its exit code and whether it exited on its own (False: we stopped it).
        """
        while True:
            code = child.poll()
            if code is not None:
                return code, True
            if self.stopping() or self.restart_requested:
                return self._stop_child(child), False
            time.sleep(POLL_SECONDS)

    def _stop_child(self, child: subprocess.Popen[bytes]) -> int:
        """SIGTERM (the agent's graceful shutdown), then SIGKILL after ``CHILD_STOP_SECONDS``."""
        self.log(f"stopping child pid={child.pid} (SIGTERM)")
        child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_SECONDS
        code = child.poll()
        while code is None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            code = child.poll()
        if code is None:
            self.log(f"child pid={child.pid} still running after {CHILD_STOP_SECONDS:g} s: SIGKILL")
            child.kill()
            code = child.wait()
        self.log(f"child stopped pid={child.pid} {describe_exit(code)}")
        return code

    def _pause(self, seconds: float) -> None:
        """Sleep before a restart; cut short by SIGTERM/SIGINT (stop) or SIGHUP (start now)."""
        deadline = time.monotonic() + seconds
        while not self.stopping() and not self.restart_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, POLL_SECONDS))


# --- daemon mode --------------------------------------------------------------------------------


def _daemonize(log_path: str) -> Tuple[bool, int]:
    """Double fork + setsid, so the caller (an Ansible task over SSH) is not held open.

    Returns ``(False, read end)`` in the calling process and ``(True, write end)`` in the daemon:
    the daemon reports ``ok`` or an error message on that pipe once its pidfile is written.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()  # not inherited by exec'd children (PEP 446)
    first = os.fork()
    if first > 0:
        os.close(write_fd)
        os.waitpid(first, 0)  # the intermediate process exits at once
        return False, read_fd
    os.close(read_fd)
    try:
        os.setsid()  # leave the caller's session: no controlling terminal, no SIGHUP from it
        if os.fork() > 0:
            os._exit(0)  # the session leader goes away: the daemon can never reacquire a tty
        os.chdir("/")  # do not keep the caller's directory (maybe a mount point) busy
        os.umask(0o022)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log_fd = open_log(log_path)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
    except OSError as exc:
        _report(write_fd, f"cannot daemonize: {exc}")
        os._exit(EXIT_FAILED)
    return True, write_fd


def _report(fd: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, message.encode("utf-8", "replace"))
    os.close(fd)


def _wait_for_daemon(read_fd: int, pidfile: str, log_path: str) -> int:
    """In the caller: exit 0 once the daemon wrote its pidfile, 1 on an error or after 10 s."""
    deadline = time.monotonic() + DAEMON_READY_SECONDS
    data = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print(
                    f"myx-agent: the supervisor did not write {pidfile} within "
                    f"{DAEMON_READY_SECONDS:g} s; see {log_path}",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            readable, _, _ = select.select([read_fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break  # the daemon closed its end: ready, or failed
            data += chunk
    finally:
        os.close(read_fd)
    pid = read_pidfile(pidfile)
    if data == b"ok" and pid is not None:
        print(f"myx-agent: supervisor started (pid {pid}, pidfile {pidfile}, log {log_path})")
        return EXIT_OK
    message = data.decode("utf-8", "replace") or f"the supervisor exited while starting; see {log_path}"
    print(f"myx-agent: {message}", file=sys.stderr)
    return EXIT_FAILED


# --- the subcommands ----------------------------------------------------------------------------


def supervise(config_path: str, pidfile: str, log_path: str, daemon: bool) -> int:
    """``myx-agent supervise``; the config at *config_path* has been validated already."""
    pidfile = os.path.abspath(pidfile)
    log_path = os.path.abspath(log_path)
    command = child_command(
        os.path.abspath(config_path), sys.argv[0], sys.executable, bool(sys.flags.isolated)
    )
    other = running_supervisor(pidfile)
    if other is not None:
        print(f"myx-agent: {AlreadyRunning(other, pidfile)}", file=sys.stderr)
        return EXIT_FAILED
    try:
        os.close(open_log(log_path))  # fail here, on the caller's terminal, not in the daemon
    except OSError as exc:
        print(f"myx-agent: cannot open the log {log_path}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    ready_fd: Optional[int] = None
    if daemon:
        in_daemon, fd = _daemonize(log_path)
        if not in_daemon:
            return _wait_for_daemon(fd, pidfile, log_path)
        ready_fd = fd
    supervisor = Supervisor(command, log_path)
    # Before the pidfile exists: a `stop` issued right after the start must find the handlers.
    supervisor.install_signal_handlers()
    try:
        write_pidfile(pidfile, os.getpid())
    except (AlreadyRunning, OSError) as exc:
        message = (
            str(exc)
            if isinstance(exc, AlreadyRunning)
            else f"cannot write the pidfile {pidfile}: {exc.strerror or exc}"
        )
        if ready_fd is not None:
            _report(ready_fd, message)
        else:
            print(f"myx-agent: {message}", file=sys.stderr)
        return EXIT_FAILED
    if ready_fd is not None:
        _report(ready_fd, "ok")
    try:
        return supervisor.run()
    finally:
        remove_pidfile(pidfile, os.getpid())


def stop(pidfile: str, timeout: float) -> int:
    """``myx-agent stop``: SIGTERM the supervisor and wait until it (and so its child) is gone."""
    pid = running_supervisor(pidfile)
    if pid is None:
        stale = " (stale pidfile)" if os.path.exists(pidfile) else ""
        print(f"myx-agent: not running{stale}")
        return EXIT_OK
    start = _identity(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print("myx-agent: not running")
        return EXIT_OK
    deadline = time.monotonic() + timeout
    while _same_process_alive(pid, start[1] if start else None):
        if time.monotonic() >= deadline:
            print(f"myx-agent: supervisor pid {pid} did not stop within {timeout:g} s", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.1)
    print(f"myx-agent: stopped (pid {pid})")
    return EXIT_OK


def status(pidfile: str) -> int:
    """``myx-agent status``: LSB exit codes, 0 running and 3 not running."""
    pid = running_supervisor(pidfile)
    if pid is None:
        print("not running")
        return EXIT_NOT_RUNNING
    print(f"running (pid {pid})")
    return EXIT_OK


def restart(pidfile: str) -> int:
    """``myx-agent restart``: SIGHUP, so the supervisor starts the child again (new pyz)."""
    pid = running_supervisor(pidfile)
    if pid is None:
        print("myx-agent: not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print("myx-agent: not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    print(f"myx-agent: restart requested (supervisor pid {pid})")
    return EXIT_OK
