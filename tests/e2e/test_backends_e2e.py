"""The whole path on PostgreSQL and MariaDB: commands stored byte-exact, server restart resumes."""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.databases import fresh_database, require
from support.serverproc import ServerProcess

PY = sys.executable


@pytest.fixture(params=["postgresql", "mariadb"])
def backend_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    backend = request.param
    require(backend)  # skips with the reason when the service is absent
    with fresh_database(backend, tmp_path) as url:
        server = ServerProcess(tmp_path / "server", database_url=url)
        try:
            server.setup().start()
            server.add_host("db-host")
            server.start_agent("db-host")
            server.wait_status("db-host", "online")
            yield server
        finally:
            server.shutdown()


def test_output_stored_byte_exact_and_resumed_after_restart(backend_server: ServerProcess) -> None:
    server = backend_server
    size = 5 * 1024 * 1024
    script = f"import random,sys; sys.stdout.buffer.write(random.Random(5).randbytes({size}))"
    done = server.run("db-host", PY, "-c", script)
    assert done["status"] == "success", done
    assert (
        hashlib.sha256(server.output(done["id"])).digest()
        == hashlib.sha256(random.Random(5).randbytes(size)).digest()
    )

    slow = "import time\nfor i in range(200):\n    print(f'row {i}', flush=True)\n    time.sleep(0.01)\n"
    created = server.ok(
        server.api.post("/api/commands", json={"host": "db-host", "command": PY, "args": ["-c", slow]})
    )
    server.kill()
    server.start()
    final = server.ok(server.api.get(f"/api/commands/{created['id']}", params={"wait": 60}))
    assert final["status"] == "success", final
    assert server.output(created["id"]) == "".join(f"row {i}\n" for i in range(200)).encode()
    page = server.ok(server.api.get("/api/commands", params={"host": "db-host"}))
    assert page["total"] == 2
