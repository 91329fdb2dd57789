"""Online self-upgrade through the agent, and automatic rollback of a build that does not come up."""

from __future__ import annotations

import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.serverproc import BundledAgent, ServerProcess


def _variant(source: Path, dest: Path, version: str, broken: bool = False) -> Path:
    """A copy of the zipapp that reports *version*; a broken one dies at start."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "myx/__init__.py":
                data = re.sub(rb'__version__ = "[^"]+"', f'__version__ = "{version}"'.encode(), data)
            if broken and item.filename == "__main__.py":
                data = b"raise SystemExit('this build is broken on purpose')\n"
            out.writestr(item, data)
    return dest


def _follow(server: ServerProcess, deployment_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = server.ok(server.api.get(f"/api/deployments/{deployment_id}", params={"wait": 20}))
        if page["status"] in ("success", "failed"):
            return dict(page)
    raise TimeoutError(deployment_id)


@pytest.fixture
def setup(tmp_path: Path, pyz: Path) -> Iterator[tuple[ServerProcess, Path]]:
    offered = tmp_path / "offered.pyz"  # what the control server hands out; tests swap it
    shutil.copy2(pyz, offered)
    server = ServerProcess(tmp_path / "server", MYX_AGENT_PYZ=str(offered))
    server.setup().start()
    try:
        server.add_host("up1")
        resp = server.api.get("/api/hosts/up1/bundle")
        bundled = BundledAgent(tmp_path / "agent", resp.content)
        server.agents.append(bundled)
        bundled.start_supervised(pyz)
        server.wait_status("up1", "online", timeout=60)
        yield server, offered
    finally:
        server.shutdown()


def test_upgrade_then_broken_build_rolls_back(setup: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, offered = setup
    _variant(offered, tmp_path / "good.pyz", "0.1.1+test").replace(offered)
    done = _follow(
        server, server.ok(server.api.post("/api/hosts/up1/upgrade", params={"health_deadline": 30}))["id"]
    )
    assert done["status"] == "success", done["log"]
    version = server.host("up1")
    deadline = time.monotonic() + 30
    while version["agent"]["version"] != "0.1.1+test" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = server.host("up1")
    assert version["agent"]["version"] == "0.1.1+test"

    _variant(offered, tmp_path / "broken.pyz", "0.1.2+broken", broken=True).replace(offered)
    failed = _follow(
        server, server.ok(server.api.post("/api/hosts/up1/upgrade", params={"health_deadline": 10}))["id"]
    )
    assert failed["status"] == "failed"
    assert "rolled back" in failed["error"]
    assert "0.1.1+test" in failed["error"]  # the agent answers on the old version
    assert server.run("up1", "echo", "after-rollback")["status"] == "success"


def test_rollout_stops_after_a_failed_canary(tmp_path: Path, pyz: Path) -> None:
    offered = tmp_path / "offered.pyz"
    _variant(pyz, offered, "0.9.9+broken", broken=True)
    server = ServerProcess(tmp_path / "server", MYX_AGENT_PYZ=str(offered))
    server.setup().start()
    try:
        names = ["roll1", "roll2", "roll3"]
        for name in names:
            server.add_host(name, labels={"ring": "all"})
            bundled = BundledAgent(tmp_path / name, server.api.get(f"/api/hosts/{name}/bundle").content)
            server.agents.append(bundled)
            bundled.start_supervised(pyz)
        for name in names:
            server.wait_status(name, "online", timeout=60)
        body = {"target": ["ring=all"], "canary": 1, "batch_size": 2, "health_deadline": 10}
        deployments = server.ok(server.api.post("/api/upgrades", json=body))
        assert len(deployments) == 3
        results = [_follow(server, d["id"]) for d in deployments]
        assert results[0]["status"] == "failed"
        assert "rolled back" in results[0]["error"]
        for later in results[1:]:
            assert later["status"] == "failed"
            assert "rollout stopped" in later["error"]
        # the hosts after the canary were never touched: still on the original version
        for name in names[1:]:
            assert server.host(name)["agent"]["version"] != "0.9.9+broken"
        assert server.run("roll2", "true")["status"] == "success"
    finally:
        server.shutdown()
