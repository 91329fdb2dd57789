"""An agent with a certificate of its own (seed 002): the control server pins it by fingerprint."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from support.serverproc import BundledAgent, ServerProcess


def test_pinned_custom_certificate(make_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = make_server().setup().start()
    server.add_host("own-cert")
    agent = BundledAgent(tmp_path / "agent", server.api.get("/api/hosts/own-cert/bundle").content)
    server.agents.append(agent)
    # drop the CA-issued pair: the agent generates its own self-signed one at start (seed 002)
    (agent.folder / "ssl" / "agent.crt").unlink()
    (agent.folder / "ssl" / "agent.key").unlink()
    agent.start()
    host = server.wait_status("own-cert", "offline", timeout=30)
    assert (
        "certificate" in host["agent"]["last_error"].lower() or "ssl" in host["agent"]["last_error"].lower()
    )
    own = (agent.folder / "ssl" / "agent.crt").read_text()
    pinned = server.ok(server.api.put("/api/hosts/own-cert/certificate", json={"cert_pem": own}))
    assert pinned["agent"]["cert_fingerprint"]
    server.wait_status("own-cert", "online", timeout=30)
    assert server.output(server.run("own-cert", "echo", "pinned")["id"]) == b"pinned\n"
    # rotation through our CA does not apply to a custom certificate
    assert server.api.post("/api/hosts/own-cert/certificate").status_code == 409
    # pin some other certificate: the real one no longer matches, the agent is unreachable
    other_key, other_crt = tmp_path / "o.key", tmp_path / "o.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=other", "-keyout", str(other_key), "-out", str(other_crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    server.ok(server.api.put("/api/hosts/own-cert/certificate", json={"cert_pem": other_crt.read_text()}))
    server.wait_status("own-cert", "offline", timeout=30)
    bad = server.api.put("/api/hosts/own-cert/certificate", json={"cert_pem": "garbage"})
    assert bad.status_code == 400
