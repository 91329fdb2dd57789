"""The fleet CA: files, issued certificates, and real TLS handshakes on loopback."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from myx.server.errors import ConfigurationError, InvalidInput
from myx.server.security.ca import (
    FleetCA,
    IssuedCertificate,
    fingerprint_of_der,
    fingerprint_of_pem,
    normalize_fingerprint,
    verify_pinned,
)

FINGERPRINT = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){31}")


# -- helpers --------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_pair(folder: Path, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return cert, key


def _self_signed(common_name: str, dns: str) -> tuple[bytes, bytes]:
    """A custom certificate the fleet CA knows nothing about (seed 002)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class TLSServer:
    """A threaded TLS server on 127.0.0.1, port 0: handshakes each connection, records what it saw."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._ctx = ctx
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.peer_certs: list[bytes | None] = []
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-test-server", daemon=True)

    def __enter__(self) -> TLSServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sock.close()
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    with self._ctx.wrap_socket(conn, server_side=True) as tls:
                        self.peer_certs.append(tls.getpeercert(binary_form=True))
                        tls.sendall(b"hello\n")
                        tls.recv(16)  # until the client closes
                except (ssl.SSLError, OSError) as exc:
                    self.errors.append(exc)


def _server_context(
    tmp_path: Path, issued: IssuedCertificate | tuple[bytes, bytes], client_ca: bytes | None
) -> ssl.SSLContext:
    """What an agent builds: its certificate, and (mutual TLS) the fleet CA for client certs."""
    cert_pem, key_pem = (issued.cert_pem, issued.key_pem) if isinstance(issued, IssuedCertificate) else issued
    cert, key = _write_pair(tmp_path, f"server{len(list(tmp_path.iterdir()))}", cert_pem, key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cadata=client_ca.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13 agents have it on by default
    return ctx


def _connect(port: int, ctx: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> bytes:
    """Handshake, read the greeting, return the server's certificate (DER)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        peer = tls.getpeercert(binary_form=True)
        # With TLS 1.3 the server judges the client certificate after the client's handshake has
        # finished: a refusal shows up on the first read.
        assert tls.recv(16) == b"hello\n"
        assert peer is not None
        return peer


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> FleetCA:
    return FleetCA.load_or_create(tmp_path_factory.mktemp("fleet") / "ca")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> FleetCA:
    return FleetCA.load_or_create(tmp_path_factory.mktemp("other") / "ca")


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(old)


# -- files ----------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.iterdir())
        if p.suffix in (".crt", ".key")
    }


def test_create_then_reload_gives_the_same_ca_without_rewriting_it(tmp_path: Path) -> None:
    first = FleetCA.load_or_create(tmp_path / "data" / "ca")
    before = _snapshot(first.ca_dir)
    assert set(before) == {"ca.crt", "ca.key", "client.crt", "client.key"}
    again = FleetCA.load_or_create(tmp_path / "data" / "ca")
    assert again.fingerprint == first.fingerprint
    assert FINGERPRINT.fullmatch(first.fingerprint)
    assert again.ca_pem == first.ca_pem == first.ca_path.read_bytes()
    assert _snapshot(first.ca_dir) == before
    assert not [p for p in first.ca_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_file_modes(tmp_path: Path, umask: Callable[[int], None], mask: int) -> None:
    umask(mask)
    ca = FleetCA.load_or_create(tmp_path / "ca")
    assert _mode(ca.ca_dir) == 0o700
    assert _mode(ca.ca_dir / "ca.key") == 0o600
    assert _mode(ca.client_key_path) == 0o600
    assert _mode(ca.ca_path) == 0o644
    assert _mode(ca.client_cert_path) == 0o644


def test_existing_open_folder_is_tightened_on_first_start(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    folder.mkdir(mode=0o755)
    FleetCA.load_or_create(folder)
    assert _mode(folder) == 0o700


@pytest.mark.parametrize("name", ["ca.key", "client.key"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_a_key_readable_by_others(tmp_path: Path, name: str, mode: int) -> None:
    ca = FleetCA.load_or_create(tmp_path / "ca")
    key = ca.ca_dir / name
    key.chmod(mode)
    before = _snapshot(ca.ca_dir)
    with pytest.raises(ConfigurationError) as info:
        FleetCA.load_or_create(tmp_path / "ca")
    assert f"chmod 600 {key}" in info.value.message
    assert _snapshot(ca.ca_dir) == before


@pytest.mark.parametrize("missing", ["ca.crt", "ca.key"])
def test_half_a_ca_is_refused_not_replaced(tmp_path: Path, missing: str) -> None:
    ca = FleetCA.load_or_create(tmp_path / "ca")
    (ca.ca_dir / missing).unlink()
    kept = "ca.key" if missing == "ca.crt" else "ca.crt"
    content = (ca.ca_dir / kept).read_bytes()
    with pytest.raises(ConfigurationError, match=missing):
        FleetCA.load_or_create(tmp_path / "ca")
    assert (ca.ca_dir / kept).read_bytes() == content


def test_mismatched_ca_pair_is_refused(tmp_path: Path) -> None:
    one = FleetCA.load_or_create(tmp_path / "one")
    two = FleetCA.load_or_create(tmp_path / "two")
    shutil.copy(two.ca_path, one.ca_path)
    with pytest.raises(ConfigurationError, match="do not belong together"):
        FleetCA.load_or_create(tmp_path / "one")


def test_ca_certificate(ca: FleetCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.ca_pem)
    assert cert.subject == cert.issuer
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(common_name, str)
    assert re.fullmatch(r"MyX Fleet CA [0-9a-f]{8}", common_name)
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert ku.crl_sign
    assert not ku.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=3640) < lifetime <= timedelta(days=3650)
    assert fingerprint_of_pem(ca.ca_pem) == ca.fingerprint


def test_client_certificate(ca: FleetCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.client_cert_path.read_bytes())
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=720) < lifetime <= timedelta(days=730)


def _expiring_client_cert(ca: FleetCA, days: int) -> None:
    ca_key = serialization.load_pem_private_key((ca.ca_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old client")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=700))
        .not_valid_after(now + timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(
        ca.ca_dir,
        "client",
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def test_client_certificate_is_renewed_30_days_before_expiry(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / "ca")
    ca_files = {n: v for n, v in _snapshot(ca.ca_dir).items() if n.startswith("ca.")}

    _expiring_client_cert(ca, days=45)
    kept = ca.client_cert_path.read_bytes()
    FleetCA.load_or_create(tmp_path / "ca")
    assert ca.client_cert_path.read_bytes() == kept  # not due yet

    _expiring_client_cert(ca, days=20)
    FleetCA.load_or_create(tmp_path / "ca")
    renewed = x509.load_pem_x509_certificate(ca.client_cert_path.read_bytes())
    assert renewed.not_valid_after_utc - datetime.now(UTC) > timedelta(days=700)
    assert _mode(ca.client_key_path) == 0o600
    assert {n: v for n, v in _snapshot(ca.ca_dir).items() if n.startswith("ca.")} == ca_files


def test_client_certificate_from_another_ca_or_corrupt_is_replaced(tmp_path: Path, other_ca: FleetCA) -> None:
    ca = FleetCA.load_or_create(tmp_path / "ca")
    shutil.copy(other_ca.client_cert_path, ca.client_cert_path)
    shutil.copy(other_ca.client_key_path, ca.client_key_path)
    FleetCA.load_or_create(tmp_path / "ca")
    x509.load_pem_x509_certificate(ca.client_cert_path.read_bytes()).verify_directly_issued_by(ca.certificate)

    ca.client_cert_path.write_bytes(b"not a certificate")
    FleetCA.load_or_create(tmp_path / "ca")
    x509.load_pem_x509_certificate(ca.client_cert_path.read_bytes()).verify_directly_issued_by(ca.certificate)


# -- issued agent certificates ----------------------------------------------------------------


def test_issued_certificate_chains_to_the_ca_and_names_the_agent(ca: FleetCA) -> None:
    issued = ca.issue_agent_certificate(
        "web-01", ["10.1.2.3", "Web-01.Example.COM.", "2001:db8::7", "[fd00::1]"]
    )
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web-01"

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web-01.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("10.1.2.3", "2001:db8::7", "fd00::1", "127.0.0.1", "::1")
    ]
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()
    assert issued.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(issued)

    assert FINGERPRINT.fullmatch(issued.fingerprint)
    assert issued.fingerprint == fingerprint_of_pem(issued.cert_pem)
    assert issued.not_after.tzinfo is not None
    assert issued.not_after.utcoffset() == timedelta(0)
    assert issued.not_after == cert.not_valid_after_utc
    assert timedelta(days=824) < issued.not_after - datetime.now(UTC) <= timedelta(days=825)


def test_issued_certificate_passes_an_rfc5280_verifier(ca: FleetCA) -> None:
    issued = ca.issue_agent_certificate("db-7", ["db-7.internal", "192.0.2.10"])
    leaf = x509.load_pem_x509_certificate(issued.cert_pem)
    store = Store([ca.certificate])
    for name in (x509.DNSName("db-7.internal"), x509.IPAddress(ipaddress.ip_address("192.0.2.10"))):
        chain = PolicyBuilder().store(store).build_server_verifier(name).verify(leaf, [])
        assert chain[-1] == ca.certificate


def test_serials_and_keys_are_fresh(ca: FleetCA) -> None:
    a = ca.issue_agent_certificate("same", ["10.0.0.1"])
    b = ca.issue_agent_certificate("same", ["10.0.0.1"])
    ca_a, ca_b = x509.load_pem_x509_certificate(a.cert_pem), x509.load_pem_x509_certificate(b.cert_pem)
    assert ca_a.serial_number != ca_b.serial_number
    assert a.key_pem != b.key_pem
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize(
    ("name", "addresses", "days"),
    [
        ("", [], 825),
        ("x" * 65, [], 825),
        ("ok", ["https://10.0.0.1"], 825),
        ("ok", ["bad_name.example"], 825),
        ("ok", ["-leading.example"], 825),
        ("ok", [""], 825),
        ("ok", ["bücher.example"], 825),
        ("ok", ["a..b"], 825),
        ("ok", [], 0),
        ("ok", [], 100_000),
    ],
)
def test_issue_rejects_bad_input(ca: FleetCA, name: str, addresses: list[str], days: int) -> None:
    with pytest.raises(InvalidInput):
        ca.issue_agent_certificate(name, addresses, days=days)


# -- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_helpers(ca: FleetCA) -> None:
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    fp = fingerprint_of_der(der)
    assert fp == ca.fingerprint
    assert normalize_fingerprint(fp.upper()) == fp
    assert normalize_fingerprint(fp.replace(":", "")) == fp
    assert normalize_fingerprint(f"SHA256:{fp}") == fp
    assert verify_pinned(der, fp)
    assert verify_pinned(der, fp.replace(":", "").upper())
    assert not verify_pinned(der, fp[:-1] + ("0" if fp[-1] != "0" else "1"))
    assert not verify_pinned(der, "garbage")
    assert not verify_pinned(b"", fp)
    with pytest.raises(InvalidInput):
        normalize_fingerprint("ab:cd")
    with pytest.raises(InvalidInput):
        fingerprint_of_pem(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


# -- TLS on loopback --------------------------------------------------------------------------


def test_context_settings(ca: FleetCA) -> None:
    ctx = ca.agent_ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.cert_store_stats()["x509"] == 1  # the fleet CA only, not the system store
    pinned = ca.pinned_ssl_context(_self_signed("custom", "custom.example")[0])
    assert pinned.verify_mode == ssl.CERT_REQUIRED
    assert not pinned.check_hostname
    assert pinned.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert pinned.cert_store_stats()["x509"] == 1  # the pinned certificate only
    with pytest.raises(InvalidInput):
        ca.pinned_ssl_context(b"not a certificate")


def test_mutual_tls_handshake_with_the_fleet_ca(ca: FleetCA, tmp_path: Path) -> None:
    issued = ca.issue_agent_certificate("agent-1", ["10.9.9.9"])
    with TLSServer(_server_context(tmp_path, issued, client_ca=ca.ca_pem)) as server:
        client = ca.agent_ssl_context()
        seen_by_client = _connect(server.port, client)
        assert fingerprint_of_der(seen_by_client) == issued.fingerprint
        _connect(server.port, client, server_hostname="localhost")
    assert not server.errors
    assert len(server.peer_certs) == 2
    client_der = x509.load_pem_x509_certificate(ca.client_cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert server.peer_certs == [client_der, client_der]


def test_tls_without_client_certificates_also_works(ca: FleetCA, tmp_path: Path) -> None:
    """An agent that does not ask for a client certificate: server-auth only."""
    issued = ca.issue_agent_certificate("agent-2", [])
    with TLSServer(_server_context(tmp_path, issued, client_ca=None)) as server:
        _connect(server.port, ca.agent_ssl_context())
    assert server.peer_certs == [None]


def test_hostname_is_checked(ca: FleetCA, tmp_path: Path) -> None:
    issued = ca.issue_agent_certificate("agent-3", ["10.0.0.3"])
    with (
        TLSServer(_server_context(tmp_path, issued, client_ca=ca.ca_pem)) as server,
        pytest.raises(ssl.SSLCertVerificationError, match="match"),
    ):
        _connect(server.port, ca.agent_ssl_context(), server_hostname="10.0.0.4")
    assert not server.peer_certs


def test_agent_certificate_from_another_ca_is_rejected(
    ca: FleetCA, other_ca: FleetCA, tmp_path: Path
) -> None:
    impostor = other_ca.issue_agent_certificate("agent-1", ["127.0.0.1"])
    with (
        TLSServer(_server_context(tmp_path, impostor, client_ca=ca.ca_pem)) as server,
        pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"),
    ):
        _connect(server.port, ca.agent_ssl_context())
    assert not server.peer_certs


def _refused(port: int, ctx: ssl.SSLContext) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError, AssertionError)):
        _connect(port, ctx)


def test_client_without_certificate_is_refused_when_the_agent_requires_one(
    ca: FleetCA, tmp_path: Path
) -> None:
    issued = ca.issue_agent_certificate("agent-4", [])
    no_client_cert = ssl.create_default_context(cadata=ca.ca_pem.decode())
    with TLSServer(_server_context(tmp_path, issued, client_ca=ca.ca_pem)) as server:
        _refused(server.port, no_client_cert)
    assert not server.peer_certs
    assert len(server.errors) == 1
    assert isinstance(server.errors[0], ssl.SSLError)
    assert "certificate" in str(server.errors[0]).lower()


def test_client_certificate_from_another_ca_is_refused(
    ca: FleetCA, other_ca: FleetCA, tmp_path: Path
) -> None:
    issued = ca.issue_agent_certificate("agent-5", [])
    wrong_client = ssl.create_default_context(cadata=ca.ca_pem.decode())
    wrong_client.load_cert_chain(other_ca.client_cert_path, other_ca.client_key_path)
    with TLSServer(_server_context(tmp_path, issued, client_ca=ca.ca_pem)) as server:
        _refused(server.port, wrong_client)
    assert not server.peer_certs
    assert len(server.errors) == 1
    assert isinstance(server.errors[0], ssl.SSLCertVerificationError)


def test_pinned_self_signed_certificate_is_accepted_and_another_rejected(ca: FleetCA, tmp_path: Path) -> None:
    custom = _self_signed("custom-agent", "custom.example")  # names nothing we dial: the pin is the identity
    stranger = _self_signed("custom-agent", "custom.example")  # same names, different key
    with TLSServer(_server_context(tmp_path, custom, client_ca=ca.ca_pem)) as server:
        peer = _connect(server.port, ca.pinned_ssl_context(custom[0]))
        assert verify_pinned(peer, fingerprint_of_pem(custom[0]))
        assert not verify_pinned(peer, fingerprint_of_pem(stranger[0]))
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            _connect(server.port, ca.pinned_ssl_context(stranger[0]))
        # Nor does the fleet CA vouch for a certificate it did not issue.
        with pytest.raises(ssl.SSLCertVerificationError):
            _connect(server.port, ca.agent_ssl_context())
    # The pinned connection still presented the control server's client certificate.
    assert len(server.peer_certs) == 1
    assert server.peer_certs[0] is not None


def test_pinning_a_ca_issued_leaf_trusts_that_leaf_only(ca: FleetCA, tmp_path: Path) -> None:
    """A pinned certificate that is not self-signed still verifies; its issuer gains no trust."""
    pinned = ca.issue_agent_certificate("agent-6", [])
    sibling = ca.issue_agent_certificate("agent-7", [])
    ctx = ca.pinned_ssl_context(pinned.cert_pem + ca.ca_pem)  # a chain file: the leaf is pinned
    with TLSServer(_server_context(tmp_path, pinned, client_ca=ca.ca_pem)) as server:
        assert fingerprint_of_der(_connect(server.port, ctx)) == pinned.fingerprint
    with (
        TLSServer(_server_context(tmp_path, sibling, client_ca=ca.ca_pem)) as server,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        _connect(server.port, ctx)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_pinning_the_agents_own_self_signed_certificate(ca: FleetCA, tmp_path: Path) -> None:
    """The fallback pair the agent makes with openssl (seed 002) works with pinning."""
    from myx.agent.certs import generate_self_signed

    cert, key = tmp_path / "ssl" / "agent.crt", tmp_path / "ssl" / "agent.key"
    generate_self_signed(str(cert), str(key))
    with TLSServer(
        _server_context(tmp_path, (cert.read_bytes(), key.read_bytes()), client_ca=None)
    ) as server:
        peer = _connect(server.port, ca.pinned_ssl_context(cert.read_bytes()))
    assert verify_pinned(peer, fingerprint_of_pem(cert.read_bytes()))


def test_a_file_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca").write_text("oops")
    mode = _mode(tmp_path / "ca")
    with pytest.raises(ConfigurationError, match="not a directory"):
        FleetCA.load_or_create(tmp_path / "ca")
    assert (tmp_path / "ca").read_text() == "oops"
    assert _mode(tmp_path / "ca") == mode


def test_concurrent_first_starts_agree_on_one_ca(tmp_path: Path) -> None:
    """Two control-server workers starting at once must not each create a CA."""
    results: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            results.append(FleetCA.load_or_create(tmp_path / "ca").fingerprint)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(results) == 8
    assert len(set(results)) == 1
    assert FleetCA.load_or_create(tmp_path / "ca").fingerprint == results[0]
