"""Certificate rotation: the agent hot-swaps its certificate; commands in flight are not lost."""

from __future__ import annotations

import hashlib
import socket
import ssl
import sys
import time

from support.serverproc import ServerProcess


def _served_fingerprint(server: ServerProcess, host: str) -> str:
    """The certificate the agent presents now, over a verified mutual-TLS handshake."""
    ca = server.workdir / "data" / "ca"
    ctx = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    ctx.load_cert_chain(str(ca / "client.crt"), str(ca / "client.key"))
    port = server.host(host)["agent"]["rpc_port"]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())


def test_rotation_without_losing_an_in_flight_command(server: ServerProcess) -> None:
    before = server.host("web2")["agent"]["cert_fingerprint"]
    assert _served_fingerprint(server, "web2") == before
    script = "import time\nfor i in range(60):\n    print(i, flush=True)\n    time.sleep(0.05)\n"
    created = server.ok(
        server.api.post(
            "/api/commands", json={"host": "web2", "command": sys.executable, "args": ["-c", script]}
        )
    )
    server.wait_command(created["id"], "running")
    time.sleep(0.5)
    rotated = server.ok(server.api.post("/api/hosts/web2/certificate"))
    after = rotated["agent"]["cert_fingerprint"]
    assert after != before
    assert _served_fingerprint(server, "web2") == after
    final = server.ok(server.api.get(f"/api/commands/{created['id']}", params={"wait": 60}))
    assert final["status"] == "success"
    assert server.output(created["id"]) == "".join(f"{i}\n" for i in range(60)).encode()
    # the control server keeps talking to the agent with the new certificate
    assert server.run("web2", "echo", "still-here")["status"] == "success"
