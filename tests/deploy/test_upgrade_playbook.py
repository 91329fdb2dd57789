"""upgrade_agent.yml with ansible-runner over a real sshd on loopback (helpers from test_install_playbook).

Installs the real myx-agent.pyz with install_agent.yml (root, key, supervisor, under tmp_path), then
upgrades it to a copy with another version string (the agent answers with the new version), then
to a build that does not start (the play fails with MYX_ROLLED_BACK and the previous version answers
again). The fixtures stop the agent, the ssh masters and the sshd.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from deploy import test_install_playbook as install
from deploy.test_install_playbook import Target, _describe, _is_supervisor

# The install tests' fixtures, used here by name.
sshd = install.sshd
agent_pyz = install.agent_pyz
pki = install.pki
root_target = install.root_target

pytestmark = pytest.mark.slow

NEW_VERSION = "0.1.1+upgradetest"
BROKEN_VERSION = "0.1.2+broken"


def rebuild(source: Path, out: Path, version: str, broken: bool = False) -> Path:
    """A copy of *source* whose myx/__init__.py says *version*; *broken*: __main__.py exits at once."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "myx/__init__.py":
                text = data.decode()
                assert '__version__ = "' in text
                head, _, rest = text.partition('__version__ = "')
                data = f'{head}__version__ = "{version}"{rest.partition(chr(34))[2]}'.encode()
            elif info.filename == "__main__.py" and broken:
                data = b"raise SystemExit('broken')\n"
            new.writestr(info, data)
    out.chmod(0o644)
    return out


def test_upgrade_then_broken_upgrade_rolls_back(root_target: Target) -> None:
    installed = root_target.install()
    assert installed.status == "successful", _describe(installed)
    old_version = root_target.health()["version"]
    assert old_version != NEW_VERSION
    pid = root_target.supervisor_pid()
    assert pid is not None

    # (a) a good new build: backup kept, same supervisor, the agent answers with the new version.
    newer = rebuild(root_target.pyz, root_target.workdir / "myx-agent-newer.pyz", NEW_VERSION)
    upgraded = root_target.run("upgrade_agent.yml", myx_pyz_src=str(newer), myx_health_timeout=30)
    assert upgraded.status == "successful", _describe(upgraded)
    assert f"version {NEW_VERSION}" in upgraded.output, _describe(upgraded)
    assert root_target.health()["version"] == NEW_VERSION
    assert root_target.installed_pyz.read_bytes() == newer.read_bytes()
    backup = root_target.installed_pyz.with_name("myx-agent.pyz.backup")
    assert backup.read_bytes() == root_target.pyz.read_bytes()
    assert root_target.installed_pyz.stat().st_mode & 0o777 == 0o755
    assert root_target.supervisor_pid() == pid  # SIGHUP: the supervisor restarted its child

    # (b) a build that does not start: rolled back to the version that ran before.
    broken = rebuild(root_target.pyz, root_target.workdir / "myx-agent-broken.pyz", BROKEN_VERSION, True)
    failed = root_target.run("upgrade_agent.yml", myx_pyz_src=str(broken), myx_health_timeout=6)
    assert failed.status == "failed", _describe(failed)
    assert "MYX_ROLLED_BACK:" in failed.output, _describe(failed)
    assert "MYX_ROLLBACK_FAILED" not in failed.output, _describe(failed)
    assert root_target.health()["version"] == NEW_VERSION
    assert root_target.installed_pyz.read_bytes() == newer.read_bytes()
    assert root_target.supervisor_pid() == pid
    assert _is_supervisor(pid)


def test_upgrade_without_an_installed_agent_fails(root_target: Target) -> None:
    run = root_target.run("upgrade_agent.yml")
    assert run.status == "failed", _describe(run)
    assert "MYX_NOT_INSTALLED" in run.output, _describe(run)
    assert not root_target.installed_pyz.exists()
