"""Self-upgrade with automatic rollback (seed 004's update flow; DESIGN.md "Self-upgrade").

``upgrade_agent`` verifies the new zipapp's sha256, keeps ``myx-agent.pyz.backup``, swaps the
file atomically, leaves a marker in the state dir and restarts (the service manager starts the
new file).  A watchdog started from the *backup* (the old, known-good code) waits for the new
version to confirm it came up; if the deadline passes first, it puts the backup back and stops
the broken process so the service manager starts the old version again.  The outcome is kept in
``upgrade-result.json`` and reported by ``get_status``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from typing import Any, Dict, Optional

from myx import __version__
from myx.agent.errors import InvalidInputError

log = logging.getLogger(__name__)

MARKER = "upgrade.json"
RESULT = "upgrade-result.json"


def running_pyz() -> Optional[str]:
    path = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return path if path and os.path.isfile(path) and zipfile.is_zipfile(path) else None


def stage(state_dir: str, data: bytes, sha256: str, version: str, deadline: float) -> Dict[str, Any]:
    """Verify and install *data* as the new zipapp; returns the marker written."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise InvalidInputError(f"sha256 mismatch: got {actual}, expected {sha256}")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise InvalidInputError("the upload is not a zipapp")
    pyz = running_pyz()
    if pyz is None:
        raise InvalidInputError("this agent does not run from myx-agent.pyz: upgrade it by reinstalling")
    backup = pyz + ".backup"
    staged = pyz + ".new"
    with open(staged, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(staged, 0o755)  # noqa: S103 - an executable zipapp, like the one it replaces
    shutil.copy2(pyz, backup)
    os.replace(staged, pyz)
    marker = {
        "from_version": __version__,
        "to_version": version,
        "pyz": pyz,
        "backup": backup,
        "deadline": time.time() + deadline,
        "started": time.time(),
    }
    _write(os.path.join(state_dir, MARKER), marker)
    return marker


def start_watchdog(config_path: str, marker: Dict[str, Any]) -> None:
    """The old code watches the new one: run from the backup, detached from this process."""
    subprocess.Popen(
        [sys.executable, "-I", marker["backup"], "upgrade-watch", "--config", config_path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def confirm(state_dir: str) -> None:
    """Called once this process serves: if an upgrade to this version is pending, it succeeded."""
    marker = _read(os.path.join(state_dir, MARKER))
    if marker is None or marker.get("to_version") != __version__:
        return
    _write(os.path.join(state_dir, RESULT), {**marker, "status": "success", "finished": time.time()})
    os.unlink(os.path.join(state_dir, MARKER))
    log.info("upgrade confirmed version=%s", __version__)


def last_result(state_dir: str) -> Optional[Dict[str, Any]]:
    return _read(os.path.join(state_dir, RESULT))


def watch(state_dir: str, poll: float = 1.0) -> int:
    """The watchdog: wait for the confirmation; past the deadline, roll back."""
    path = os.path.join(state_dir, MARKER)
    while True:
        marker = _read(path)
        if marker is None:
            return 0  # confirmed (or rolled back by someone else)
        if time.time() >= float(marker["deadline"]):
            rollback(state_dir, marker)
            return 1
        time.sleep(poll)


def rollback(state_dir: str, marker: Dict[str, Any]) -> None:
    pyz, backup = marker["pyz"], marker["backup"]
    restored = pyz + ".restore"
    shutil.copy2(backup, restored)
    os.replace(restored, pyz)
    waited = time.time() - float(marker["started"])
    reason = f"version {marker['to_version']} did not come up healthy within {waited:.0f} s; rolled back"
    _write(
        os.path.join(state_dir, RESULT),
        {**marker, "status": "rolled_back", "reason": reason, "finished": time.time()},
    )
    os.unlink(os.path.join(state_dir, MARKER))
    _stop_broken(pyz)


def _stop_broken(pyz: str) -> None:
    """Stop agent processes still running the broken file; the service manager restarts the old one."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if pyz.encode() in argv and b"run" in argv:
            with contextlib.suppress(OSError):
                os.kill(int(name), signal.SIGTERM)


def _write(path: str, data: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _read(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
