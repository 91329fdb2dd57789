"""A private OpenSSH server on a free loopback port, for tests that drive real SSH (Ansible installs).

Everything lives in one temporary folder: its config, its own host key, the authorized keys
(``AuthorizedKeysFile <tmp>/authorized_keys/%u``, so root's ``~/.ssh`` is never touched), its pidfile
and its log. Only 127.0.0.1 is listened on. Needs root (sshd must switch users) and
``/usr/sbin/sshd`` (``scripts/install_test_deps.sh`` installs it); ``sshd_unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
USERS = ("root", "myxtest")
START_TIMEOUT = 10.0


def sshd_unavailable() -> str | None:
    """Why a private sshd cannot run here (a skip reason), or None when it can."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (run scripts/install_test_deps.sh as root: it installs openssh-server)"
    if os.geteuid() != 0:
        return "a private sshd needs root (it switches to the logged-in user)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (openssh-client)"
    return None


def free_port() -> int:
    """A port nothing listens on right now (bind to port 0, read it, release it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Pids whose parent is *pid* (sshd's per-connection processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


class SshServer:
    """``/usr/sbin/sshd -D -e -f <tmp>/sshd_config`` on 127.0.0.1:``port``."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path | None = None) -> None:
        # A short path of its own: ssh control sockets and authorized_keys live below it.
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="myx-sshd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        # Non-root users must reach their authorized_keys file (sshd reads it as that user).
        self.dir.chmod(0o755)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.keys_dir = self.dir / "authorized_keys"
        self.config_path = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.pidfile = self.dir / "sshd.pid"
        self._client_key: Path | None = None

    # lifecycle

    def start(self) -> SshServer:
        if not self.host_key.exists():
            _keygen(self.host_key, "myx-test-sshd")
        self.keys_dir.mkdir(exist_ok=True)
        self.keys_dir.chmod(0o755)
        for _attempt in range(3):
            self.port = free_port()
            self._write_config()
            check = subprocess.run([SSHD, "-t", "-f", str(self.config_path)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"sshd rejects its config: {check.stderr.strip()}")
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the test run reaches pytest, not sshd
            )
            log.close()
            if self._wait_listening():
                return self
            self.stop()
            if "address already in use" not in self.log_tail().lower():
                break  # not a lost race for the port: retrying will not help
        raise RuntimeError(f"sshd did not start; log:\n{self.log_tail()}")

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    sock.settimeout(2)
                    if sock.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop sshd by its pid, and the connections it still serves (its children), then wait."""
        if self.proc is None:
            return
        pid = self.proc.pid
        if self.proc.poll() is None:
            for child in _children(pid):
                _terminate(child)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        """stop() and remove the folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {self.host}:{self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pidfile}",
            f"AuthorizedKeysFile {self.keys_dir}/%u",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            f"AllowUsers {' '.join(USERS)}",
            "Subsystem sftp internal-sftp",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "LogLevel VERBOSE",
            # Ansible opens a few connections at once; the default MaxStartups would drop some.
            "MaxStartups 50:30:100",
            "MaxSessions 50",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # credentials

    def client_key(self) -> Path:
        """A fresh ed25519 client key (private key path) authorized for root and myxtest."""
        if self._client_key is None:
            key = self.dir / "client_ed25519"
            _keygen(key, "myx-test-client")
            public = (key.with_name(key.name + ".pub")).read_text()
            for user in USERS:
                self.authorize(user, public)
            self._client_key = key
        return self._client_key

    def authorize(self, user: str, public_key: str) -> None:
        path = self.keys_dir / user
        with open(path, "a") as fh:
            fh.write(public_key.strip() + "\n")
        path.chmod(0o644)

    def known_hosts(self) -> Path:
        """A known_hosts file that pins this server's host key for ``[127.0.0.1]:PORT``."""
        public = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        path = self.dir / f"known_hosts-{self.port}"
        path.write_text(f"[{self.host}]:{self.port} {public[0]} {public[1]}\n")
        return path

    def set_password(self, user: str, password: str) -> None:
        """Set *user*'s system password (chpasswd; we are root)."""
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, capture_output=True)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
