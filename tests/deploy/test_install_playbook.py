"""install_agent.yml / uninstall_agent.yml run with ansible-runner over a real sshd on loopback.

Each test starts a private sshd (tests/support/sshd.py), builds a bundle (config.json + ssl/ from a
test CA) and installs the real myx-agent.pyz into folders under the test's own tmp dir (or under
``~myxtest``), with the built-in supervisor, exactly as the control server runs the playbooks:
``ANSIBLE_CONFIG`` = the deployment tool's ansible.cfg, a one-host inventory, the variables as
extra vars, and the host key policy in ``ansible_ssh_common_args``.
Every test stops the agents and ssh connections it started, and its sshd.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from myx.deployment_tool import TOOL_DIR, VERSION
from support.sshd import SshServer, free_port, sshd_unavailable

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = TOOL_DIR / "playbooks"
CHECK_SERVICE = TOOL_DIR / "scripts" / "check_service.py"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
TOKEN = "install-test-token-0123456789abcdef"
RPC_PATH = "inst4ll-0123456789abcdef"
TEST_USER = "myxtest"
HOST = "target"
RUN_TIMEOUT = 240  # one playbook run; the runs take seconds

pytestmark = pytest.mark.slow


# --- the deployment tool package ------------------------------------------------------------------


def test_tool_dir_holds_the_package_data() -> None:
    assert VERSION == (TOOL_DIR / "VERSION").read_text().strip() == "0.1.0"
    for name in (
        "ansible.cfg",
        "inventory/localhost.ini",
        "playbooks/install_agent.yml",
        "playbooks/uninstall_agent.yml",
        "scripts/check_service.py",
        "scripts/install_ansible.sh",
    ):
        assert (TOOL_DIR / name).is_file(), name
    cfg = (TOOL_DIR / "ansible.cfg").read_text()
    assert "host_key_checking = True" in cfg


def test_check_service_port_free() -> None:
    def port_free(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(CHECK_SERVICE), "port-free", str(port)], capture_output=True, text=True
        )

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        taken = port_free(port)
    assert taken.returncode == 1, taken
    assert f"port {port} is taken" in taken.stdout
    free = port_free(port)
    assert free.returncode == 0, free
    assert f"port {port} is free" in free.stdout
    assert port_free(70000).returncode == 2


def test_check_service_rpc_health_fails_without_agent() -> None:
    result = subprocess.run(
        [sys.executable, str(CHECK_SERVICE), "rpc-health", f"https://127.0.0.1:{free_port()}/x/rpc", "t"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "refused" in result.stdout.lower()


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pyz") / "myx-agent.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_agent_pyz.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    # The supervisor subcommands the playbooks drive must be in this agent.
    help_text = subprocess.run(
        ["python3", str(out), "supervise", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "--daemon" in help_text
    out.chmod(0o644)  # readable by myxtest's ansible (it is copied as that user)
    out.parent.chmod(0o755)
    return out


@dataclass
class Pki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A test fleet CA and an agent certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MyX install test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "install-test-agent")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return Pki(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    reason = sshd_unavailable()
    if reason:
        pytest.skip(reason)
    server = SshServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def test_user() -> str:
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.skip(f"no account {TEST_USER} (scripts/install_test_deps.sh creates it)")
    return TEST_USER


# --- the installs ---------------------------------------------------------------------------------


@dataclass
class Run:
    status: str
    rc: int
    stats: dict[str, Any]
    output: str
    seconds: float

    def count(self, what: str) -> int:
        return int((self.stats or {}).get(what, {}).get(HOST, 0))

    @property
    def changed(self) -> int:
        return self.count("changed")


@dataclass
class Target:
    """One install: where it goes on the host, how ansible logs in, and what it started."""

    sshd: SshServer
    workdir: Path
    pyz: Path
    pki: Pki
    user: str = "root"
    password: str | None = None
    home: Path = Path("/root")
    install_dir: str = ""
    config_dir: str = ""
    state_dir: str = ""
    rpc_port: int = field(default_factory=free_port)
    known_hosts: Path | None = None
    strict_host_key: str = "yes"
    python: str | None = None  # myx_python; None: the playbook finds python3 in the user's PATH
    control_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="myx-cp-")))
    runs: int = 0

    def __post_init__(self) -> None:
        self.bundle = self.workdir / "bundle"
        self.write_bundle()

    # paths on the host (the same machine), with ~ resolved

    def local(self, path: str) -> Path:
        return Path(path.replace("~", str(self.home), 1) if path.startswith("~") else path)

    @property
    def pidfile(self) -> Path:
        return self.local(self.install_dir) / "myx-agent.pid"

    @property
    def installed_pyz(self) -> Path:
        return self.local(self.install_dir) / "myx-agent.pyz"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.rpc_port}/{RPC_PATH}/rpc"

    # inputs

    def write_bundle(self, config: dict[str, Any] | None = None, raw: str | None = None) -> None:
        """config.json written like tests/support/agentproc.py does, and ssl/ from the test CA."""
        ssl_dir = self.bundle / "ssl"
        ssl_dir.mkdir(parents=True, exist_ok=True)
        body = {
            "agent_id": "install-test",
            "agent_token": TOKEN,
            "rpc_port": self.rpc_port,
            "rpc_path": RPC_PATH,
            "bind_address": "127.0.0.1",
            "certificate_path": "ssl/agent.crt",
            "private_key_path": "ssl/agent.key",
            "state_dir": str(self.local(self.state_dir)),
            "kill_grace_seconds": 1,
            **(config or {}),
        }
        (self.bundle / "config.json").write_text(raw if raw is not None else json.dumps(body, indent=2))
        (ssl_dir / "agent.crt").write_bytes(self.pki.cert_pem)
        (ssl_dir / "agent.key").write_bytes(self.pki.key_pem)
        (ssl_dir / "ca.crt").write_bytes(self.pki.ca_pem)
        (self.bundle / "config.json").chmod(0o600)
        (ssl_dir / "agent.key").chmod(0o600)

    def inventory(self) -> dict[str, Any]:
        known_hosts = self.known_hosts or self.sshd.known_hosts()
        host: dict[str, Any] = {
            "ansible_host": self.sshd.host,
            "ansible_port": self.sshd.port,
            "ansible_user": self.user,
            "ansible_ssh_common_args": (
                f"-o StrictHostKeyChecking={self.strict_host_key} -o UserKnownHostsFile={known_hosts}"
            ),
        }
        if self.password is None:
            host["ansible_ssh_private_key_file"] = str(self.sshd.client_key())
            host["ansible_ssh_common_args"] += " -o IdentitiesOnly=yes"
        else:
            host["ansible_password"] = self.password
            host["ansible_ssh_common_args"] += (
                " -o PubkeyAuthentication=no -o PreferredAuthentications=password"
            )
        return {"all": {"hosts": {HOST: host}}}

    def extravars(self, **extra: Any) -> dict[str, Any]:
        return {
            "myx_pyz_src": str(self.pyz),
            "myx_bundle_src": str(self.bundle),
            "myx_rpc_port": self.rpc_port,
            "myx_install_dir": self.install_dir,
            "myx_config_dir": self.config_dir,
            "myx_state_dir": self.state_dir,
            "myx_service_manager": "supervisor",
            **({"myx_python": self.python} if self.python else {}),
            **extra,
        }

    # running the playbooks

    def run(self, playbook: str, **extra: Any) -> Run:
        self.runs += 1
        private = self.workdir / f"runner-{self.runs}"
        private.mkdir(mode=0o700)
        started = time.monotonic()
        result = ansible_runner.run(
            private_data_dir=str(private),
            playbook=str(PLAYBOOKS / playbook),
            inventory=self.inventory(),
            extravars=self.extravars(**extra),
            envvars={
                "ANSIBLE_CONFIG": str(TOOL_DIR / "ansible.cfg"),
                # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless the caller sets it,
                # which overrides ansible.cfg and puts StrictHostKeyChecking=no before our options.
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
                "ANSIBLE_NOCOLOR": "1",
                # ansible-runner starts `ansible-playbook` from PATH: this venv's.
                "PATH": f"{ANSIBLE_PLAYBOOK.parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            },
            quiet=True,
            timeout=RUN_TIMEOUT,
        )
        output = result.stdout.read()
        return Run(result.status, result.rc, result.stats or {}, output, time.monotonic() - started)

    def install(self, **extra: Any) -> Run:
        return self.run("install_agent.yml", **extra)

    def uninstall(self, **extra: Any) -> Run:
        return self.run("uninstall_agent.yml", **extra)

    # the agent

    def health(self, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the agent's health_check over verified TLS (the bundle's CA) until it answers."""
        context = ssl.create_default_context(cafile=str(self.bundle / "ssl" / "ca.crt"))
        body = {"jsonrpc": "2.0", "method": "health_check", "params": {}, "id": 1}
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        with httpx.Client(verify=context, timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    reply = client.post(self.url, json=body, headers={"X-Agent-Token": TOKEN})
                    return dict(reply.json()["result"])
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    last = exc
                time.sleep(0.2)
        log = self.local(self.install_dir) / "agent.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        raise AssertionError(f"agent not healthy on {self.url} after {timeout} s: {last!r}\n{tail}")

    def port_open(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.rpc_port), timeout=1):
            return True
        return False

    def supervisor_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        """Stop whatever agent this test left (stop --pidfile, then by pid) and close the ssh masters."""
        if self.pidfile.exists():
            subprocess.run(
                ["python3", str(self.pyz), "stop", "--pidfile", str(self.pidfile), "--timeout", "20"],
                capture_output=True,
                check=False,
            )
        pid = self.supervisor_pid()
        if pid is not None and _is_supervisor(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for sock in self.control_dir.iterdir() if self.control_dir.exists() else []:
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "127.0.0.1"],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self.control_dir, ignore_errors=True)


def _is_supervisor(pid: int) -> bool:
    try:
        return b"supervise" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _describe(run: Run) -> str:
    return f"status={run.status} rc={run.rc} stats={run.stats} in {run.seconds:.1f} s\n{run.output[-6000:]}"


@pytest.fixture
def root_target(sshd: SshServer, agent_pyz: Path, pki: Pki, tmp_path: Path) -> Iterator[Target]:
    """root over SSH with a key; the install below tmp_path; host key pinned (StrictHostKeyChecking=yes)."""
    tmp_path.chmod(0o755)
    prefix = tmp_path / "host"
    target = Target(
        sshd,
        tmp_path,
        agent_pyz,
        pki,
        install_dir=str(prefix / "opt" / "myx-agent"),
        config_dir=str(prefix / "etc" / "myx-agent"),
        state_dir=str(prefix / "var" / "lib" / "myx-agent"),
        # root's PATH here starts with pyenv shims, which cost ~0.1 s per module run: name the
        # interpreter (this also exercises myx_python). myxtest's run finds python3 by itself.
        python="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None,
    )
    try:
        yield target
    finally:
        target.cleanup()


@pytest.fixture
def user_target(
    sshd: SshServer, agent_pyz: Path, pki: Pki, tmp_path: Path, test_user: str
) -> Iterator[Target]:
    """myxtest over SSH with a password; the install under ~myxtest; host key trusted on first use."""
    tmp_path.chmod(0o755)
    password = f"pw-{uuid.uuid4().hex}"
    sshd.set_password(test_user, password)
    home = Path(pwd.getpwnam(test_user).pw_dir)
    name = f"myx-test-{uuid.uuid4().hex[:8]}"
    target = Target(
        sshd,
        tmp_path,
        agent_pyz,
        pki,
        user=test_user,
        password=password,
        home=home,
        install_dir=f"~/{name}/opt",
        config_dir=f"~/{name}/etc",
        state_dir=f"~/{name}/state",
        known_hosts=tmp_path / "known_hosts",  # empty: accept-new records the key
        strict_host_key="accept-new",
    )
    # The controller side (ansible-playbook, as root) reads the bundle; it need not be myxtest's.
    try:
        yield target
    finally:
        target.cleanup()
        shutil.rmtree(home / name, ignore_errors=True)


# --- (a) root, key, supervisor: install, health, idempotent rerun, upgrade ------------------------


def test_install_as_root_then_rerun_changes_nothing(root_target: Target) -> None:
    first = root_target.install()
    assert first.status == "successful", _describe(first)
    assert first.changed > 0
    health = root_target.health()
    assert health["status"] == "ok"
    pid = root_target.supervisor_pid()
    assert pid is not None
    assert _is_supervisor(pid)

    # Files and modes (seed 001 §5.4: config 0600).
    config_dir = root_target.local(root_target.config_dir)
    assert (config_dir / "config.json").stat().st_mode & 0o777 == 0o600
    assert (config_dir / "ssl").stat().st_mode & 0o777 == 0o700
    assert (config_dir / "ssl" / "agent.key").stat().st_mode & 0o777 == 0o600
    assert (config_dir / "ssl" / "agent.crt").stat().st_mode & 0o777 == 0o644
    assert root_target.local(root_target.state_dir).stat().st_mode & 0o777 == 0o700
    assert root_target.installed_pyz.stat().st_mode & 0o777 == 0o755
    installed = json.loads((config_dir / "config.json").read_text())
    assert installed["rpc_port"] == root_target.rpc_port
    assert installed["state_dir"] == str(root_target.local(root_target.state_dir))

    # The installer's own health check, with TLS verified against the bundle's CA.
    check = subprocess.run(
        [
            "python3",
            str(CHECK_SERVICE),
            "rpc-health",
            root_target.url,
            TOKEN,
            "--cafile",
            str(root_target.bundle / "ssl" / "ca.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check
    assert "agent healthy" in check.stdout

    # Same inputs again: nothing changes, the running agent is left alone (no MYX_PORT_TAKEN
    # although its own agent holds the port).
    second = root_target.install()
    assert second.status == "successful", _describe(second)
    assert second.changed == 0, _describe(second)
    assert root_target.supervisor_pid() == pid
    assert root_target.health(timeout=5)["status"] == "ok"

    # A different pyz: the old one is kept as .backup and the agent is restarted on the new one.
    newer = root_target.workdir / "myx-agent-newer.pyz"
    shutil.copy(root_target.pyz, newer)
    with zipfile.ZipFile(newer, "a") as archive:
        archive.comment = b"a newer build"
    third = root_target.install(myx_pyz_src=str(newer))
    assert third.status == "successful", _describe(third)
    assert third.changed > 0
    backup = root_target.installed_pyz.with_name("myx-agent.pyz.backup")
    assert backup.read_bytes() == root_target.pyz.read_bytes()
    assert root_target.installed_pyz.read_bytes() == newer.read_bytes()
    new_pid = root_target.supervisor_pid()
    assert new_pid is not None
    assert new_pid != pid
    assert _is_supervisor(new_pid)
    assert root_target.health()["status"] == "ok"
    leftovers = [p.name for p in root_target.installed_pyz.parent.iterdir() if p.name.endswith("~")]
    assert leftovers == []


# --- (b) a non-root user with a password, installing under its home ------------------------------


def test_install_as_user_with_password_under_home(user_target: Target) -> None:
    run = user_target.install()
    assert run.status == "successful", _describe(run)
    assert user_target.health()["status"] == "ok"
    uid = pwd.getpwnam(user_target.user).pw_uid
    config = user_target.local(user_target.config_dir) / "config.json"
    assert config.stat().st_uid == uid
    assert config.stat().st_mode & 0o777 == 0o600
    assert str(user_target.home) in str(user_target.installed_pyz)
    pid = user_target.supervisor_pid()
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid == uid  # runs as myxtest, not root
    # accept-new recorded the host key in the per-run known_hosts file.
    assert user_target.known_hosts is not None
    found = subprocess.run(
        ["ssh-keygen", "-F", f"[127.0.0.1]:{user_target.sshd.port}", "-f", str(user_target.known_hosts)],
        capture_output=True,
        text=True,
        check=False,
    )  # Debian's ssh_config hashes known_hosts entries
    assert found.returncode == 0, found
    assert "ssh-ed25519" in found.stdout

    again = user_target.install()
    assert again.status == "successful", _describe(again)
    assert again.changed == 0, _describe(again)

    removed = user_target.uninstall(myx_purge=True)
    assert removed.status == "successful", _describe(removed)
    assert not user_target.local(user_target.install_dir).exists()
    assert not user_target.local(user_target.state_dir).exists()


# --- (c) a wrong password fails fast and says so -----------------------------------------------------


def test_wrong_password_fails_fast(user_target: Target) -> None:
    user_target.password = "not-the-password"
    run = user_target.install()
    assert run.status == "failed", _describe(run)
    assert run.count("dark") == 1, _describe(run)  # unreachable, not a task failure
    assert run.seconds < 30, _describe(run)
    text = run.output.lower()
    assert "permission denied" in text or "incorrect password" in text, _describe(run)
    assert not user_target.local(user_target.install_dir).exists()


# --- host keys are checked ---------------------------------------------------------------------------


def test_changed_host_key_is_refused(root_target: Target, tmp_path: Path) -> None:
    impostor = tmp_path / "impostor_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    algorithm, key = impostor.with_name("impostor_key.pub").read_text().split()[:2]
    root_target.known_hosts = tmp_path / "known_hosts_wrong"
    root_target.known_hosts.write_text(f"[127.0.0.1]:{root_target.sshd.port} {algorithm} {key}\n")
    for policy in ("yes", "accept-new"):  # accept-new only accepts hosts it has never seen
        root_target.strict_host_key = policy
        run = root_target.install()
        assert run.status == "failed", _describe(run)
        assert run.count("dark") == 1, _describe(run)
        assert "host key verification failed" in run.output.lower(), _describe(run)
    assert not root_target.local(root_target.install_dir).exists()


# --- (d) a taken port fails with the marker the control server looks for ----------------------------


def test_taken_port_fails_with_marker(root_target: Target) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", root_target.rpc_port))
        squatter.listen()
        run = root_target.install()
    assert run.status == "failed", _describe(run)
    assert "MYX_PORT_TAKEN" in run.output, _describe(run)
    assert f"port {root_target.rpc_port}" in run.output
    assert not root_target.local(root_target.install_dir).exists()  # checked before anything is written


# --- (e) a broken bundle or an impossible request fails the play loudly ------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("config-invalid", "rpc_path"),  # valid JSON the agent refuses: its check-config says why
        ("config-not-json", "config.json"),  # not JSON at all
        ("systemd-without-systemd", "myx_service_manager=systemd needs a host that runs systemd"),
    ],
)
def test_broken_inputs_fail_loudly(root_target: Target, case: str, expected: str) -> None:
    extra: dict[str, Any] = {}
    if case == "config-invalid":
        root_target.write_bundle({"rpc_path": ""})
    elif case == "config-not-json":
        root_target.write_bundle(raw='{"agent_token": "truncated')
    else:
        if Path("/run/systemd/system").exists():
            pytest.skip("this machine runs systemd")
        extra["myx_service_manager"] = "systemd"
    run = root_target.install(**extra)
    assert run.status == "failed", _describe(run)
    assert run.count("failures") == 1, _describe(run)
    assert expected in run.output, _describe(run)
    assert root_target.supervisor_pid() is None
    assert not root_target.port_open()


# --- (f) uninstall stops the agent and removes its files -------------------------------------------


def test_uninstall_stops_the_agent_and_removes_files(root_target: Target) -> None:
    installed = root_target.install()
    assert installed.status == "successful", _describe(installed)
    assert root_target.health()["status"] == "ok"
    pid = root_target.supervisor_pid()
    assert pid is not None

    removed = root_target.uninstall()
    assert removed.status == "successful", _describe(removed)
    assert removed.changed > 0
    assert not root_target.port_open()
    assert not _is_supervisor(pid)
    assert not root_target.local(root_target.install_dir).exists()
    assert not root_target.local(root_target.config_dir).exists()
    assert root_target.local(root_target.state_dir).exists()  # kept without myx_purge (test (b) purges)

    again = root_target.uninstall()
    assert again.status == "successful", _describe(again)
    assert again.changed == 0, _describe(again)
