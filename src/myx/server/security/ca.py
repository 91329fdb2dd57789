"""The fleet CA: issues every agent's TLS certificate and the control server's client certificate.

Layout of ``ca_dir`` (``<data dir>/ca``, mode 0700)::

    ca.crt      0644  the self-signed fleet CA; agents get a copy as their client_ca_path
    ca.key      0600  its private key; never leaves this directory
    client.crt  0644  the control server's client certificate (clientAuth), for agents that
    client.key  0600  require mutual TLS; re-issued by load_or_create() 30 days before expiry

Keys are ECDSA P-256 rather than Ed25519: every OpenSSL an agent host may have (1.1 included)
and every Python ``ssl`` build verify P-256, while Ed25519 in X.509 is patchy on older hosts.

Agents are verified against this CA with hostname checking, or, for custom certificates that
the CA did not issue (seed 002), by pinning: the agent's own certificate becomes the only trust
anchor (:meth:`FleetCA.pinned_ssl_context`).  There is no unverified mode anywhere in MyX.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from myx.server.errors import ConfigurationError, InvalidInput

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CLIENT_CERT_FILE = "client.crt"
CLIENT_KEY_FILE = "client.key"

CA_VALIDITY = timedelta(days=3650)
CLIENT_VALIDITY = timedelta(days=730)
CLIENT_RENEW_BEFORE = timedelta(days=30)
# Apple's ceiling for TLS server certificates; agents get new ones on upgrade/reinstall anyway.
DEFAULT_AGENT_DAYS = 825
MAX_AGENT_DAYS = 3650
# Hosts whose clock runs a little behind must not reject a certificate issued a second ago.
_BACKDATE = timedelta(hours=1)

_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII)
_FINGERPRINT = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class IssuedCertificate:
    """An agent's new key pair. ``key_pem`` is unencrypted PKCS#8: write it 0600 on the host."""

    cert_pem: bytes
    key_pem: bytes
    fingerprint: str
    not_after: datetime

    def __repr__(self) -> str:
        # Keep the private key out of logs and tracebacks.
        return f"IssuedCertificate(fingerprint={self.fingerprint!r}, not_after={self.not_after.isoformat()})"


class FleetCA:
    """The fleet CA held by one control server. Build it with :meth:`load_or_create`."""

    def __init__(self, ca_dir: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._dir = ca_dir
        self._cert = cert
        self._key = key
        self._pem = cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, ca_dir: Path) -> FleetCA:
        """Load the CA in *ca_dir*, creating it on first start; renew the client certificate if due.

        An existing CA is only read, never rewritten: replacing it would cut off every agent.
        A lock file serialises control-server processes starting at the same moment, so two of
        them cannot each create a CA and leave half the fleet trusting the wrong one.
        """
        ca_dir = Path(ca_dir)
        created_dir = _make_private_dir(ca_dir)
        with _locked(ca_dir):
            cert_path, key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
            have_cert, have_key = cert_path.exists(), key_path.exists()
            if have_cert and have_key:
                ca = cls(ca_dir, *_load_ca(cert_path, key_path))
            elif not have_cert and not have_key:
                if not created_dir:
                    # First start in a folder someone made: the CA key must not sit in a 0755 dir.
                    os.chmod(ca_dir, 0o700)
                ca = cls._create(ca_dir)
            else:
                present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
                raise ConfigurationError(
                    f"{missing}: not found, but {present} exists; restore it from a backup. "
                    f"Removing both files creates a new fleet CA, and every agent then needs a new "
                    "certificate"
                )
            ca._ensure_client_certificate()
        return ca

    @classmethod
    def _create(cls, ca_dir: Path) -> FleetCA:
        key = ec.generate_private_key(ec.SECP256R1())
        # A random suffix tells fleets apart: a certificate issued by another MyX installation's CA
        # then fails verification with a name that shows which CA it came from.
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MyX"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"MyX Fleet CA {secrets.token_hex(4)}"),
            ]
        )
        now = datetime.now(UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            # pathlen 0: this CA signs leaves only, never an intermediate.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        # Key first, certificate last: ca.crt is what marks the CA as complete.
        _write_atomic(ca_dir / CA_KEY_FILE, _key_pem(key), 0o600)
        _write_atomic(ca_dir / CA_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(ca_dir, cert, key)

    # -- files and identity ----------------------------------------------------------------

    @property
    def ca_dir(self) -> Path:
        return self._dir

    @property
    def ca_path(self) -> Path:
        return self._dir / CA_CERT_FILE

    @property
    def client_cert_path(self) -> Path:
        return self._dir / CLIENT_CERT_FILE

    @property
    def client_key_path(self) -> Path:
        return self._dir / CLIENT_KEY_FILE

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM: what agents load as ``client_ca_path``/``server_ca_path``."""
        return self._pem

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate, ``ab:cd:...``: shown to operators to tell CAs apart."""
        return fingerprint_of_der(self._cert.public_bytes(serialization.Encoding.DER))

    # -- issuing ---------------------------------------------------------------------------

    def issue_agent_certificate(
        self, common_name: str, addresses: list[str], days: int = DEFAULT_AGENT_DAYS
    ) -> IssuedCertificate:
        """A server certificate for an agent reachable at *addresses* (IPs and/or DNS names).

        Loopback names are always included: ``myx up`` and tests dial the local agent on
        127.0.0.1/::1/localhost, and hostname checking must pass there too.
        """
        common_name = common_name.strip()
        if not 1 <= len(common_name) <= 64:
            raise InvalidInput("a certificate's common name must be 1 to 64 characters")
        if not 1 <= days <= MAX_AGENT_DAYS:
            raise InvalidInput(f"certificate validity must be between 1 and {MAX_AGENT_DAYS} days")
        names = [_general_name(address) for address in [*addresses, "localhost", "127.0.0.1", "::1"]]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            key,
            timedelta(days=days),
            ExtendedKeyUsageOID.SERVER_AUTH,
            list(dict.fromkeys(names)),  # drop duplicates, keep order
        )
        return _issued(cert, key)

    def issue_client_certificate(self, common_name: str, validity: timedelta) -> IssuedCertificate:
        """A client certificate agents accept: the control server's own, or a short-lived one for a
        health check run ON a host (SSH upgrades), since the control server's key never leaves it.
        It opens nothing by itself: every RPC still needs the agent's own token.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MyX"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            ]
        )
        cert = self._sign(subject, key, validity, ExtendedKeyUsageOID.CLIENT_AUTH)
        return _issued(cert, key)

    def _sign(
        self,
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        validity: timedelta,
        usage: x509.ObjectIdentifier,
        san: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        now = datetime.now(UTC)
        # A leaf outliving its CA would look valid on paper and fail in practice.
        not_after = min(now + validity, self._cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def _ensure_client_certificate(self) -> None:
        cert_path, key_path = self.client_cert_path, self.client_key_path
        if key_path.exists():
            _refuse_open_permissions(key_path)
        if self._client_certificate_current(cert_path, key_path):
            return
        issued = self.issue_client_certificate("MyX control server", CLIENT_VALIDITY)
        # Key first: a crash in between leaves a pair that does not match, which the next start
        # detects and replaces, rather than a new certificate next to an old key.
        _write_atomic(key_path, issued.key_pem, 0o600)
        _write_atomic(cert_path, issued.cert_pem, 0o644)

    def _client_certificate_current(self, cert_path: Path, key_path: Path) -> bool:
        """True when the pair exists, matches, was issued by this CA and is not due for renewal."""
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert.verify_directly_issued_by(self._cert)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
            # Missing, corrupt, or from an earlier CA: the client pair is derived state, re-issue it.
            return False
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            return False
        return cert.not_valid_after_utc - datetime.now(UTC) > CLIENT_RENEW_BEFORE

    # -- TLS contexts for dialling agents --------------------------------------------------

    def agent_ssl_context(self) -> ssl.SSLContext:
        """Client context for agents whose certificate this CA issued: CA + hostname verified.

        Trusts the fleet CA only (not the system store: a public CA has no say over agents), and
        presents the control server's client certificate for agents that require mutual TLS.
        Build it once and share it; each context loads keys and keeps its own session cache.
        """
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self._pem.decode("ascii"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # What Python 3.13 turns on by default; our certificates are issued to satisfy it.
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        self._load_client_certificate(ctx)
        return ctx

    def pinned_ssl_context(self, cert_pem: bytes) -> ssl.SSLContext:
        """Client context that trusts exactly the agent certificate *cert_pem* (seed 002 custom certs).

        The pinned certificate is the only trust anchor, so the handshake still verifies the
        agent's signature with it: a peer without the matching private key fails, whatever it
        presents.  Hostname checking is off because the pin, not a name, is the agent's identity
        (custom and self-signed certificates rarely name the address MyX dials); verification
        stays ``CERT_REQUIRED``.  Only the first certificate of a chain file is pinned.

        A pinned certificate that is itself a CA (``openssl req -x509`` makes CA:TRUE ones) would
        also vouch for leaves signed with its key; callers that must rule that out compare the
        peer's certificate after the handshake with :func:`verify_pinned`.
        """
        leaf = _load_certificate(cert_pem)
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cadata=leaf.public_bytes(serialization.Encoding.DER)
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        # Let the chain end at the pinned certificate even when it is not self-signed (a custom
        # certificate from a corporate CA we do not otherwise trust).
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self._load_client_certificate(ctx)
        return ctx

    def _load_client_certificate(self, ctx: ssl.SSLContext) -> None:
        try:
            ctx.load_cert_chain(self.client_cert_path, self.client_key_path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"{self.client_cert_path}: cannot load the control server's client certificate "
                f"({exc}); restart the control server to re-issue it"
            ) from None


# -- fingerprints ---------------------------------------------------------------------------


def _issued(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> IssuedCertificate:
    return IssuedCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_key_pem(key),
        fingerprint=fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER)),
        not_after=cert.not_valid_after_utc,
    )


def fingerprint_of_der(der: bytes) -> str:
    """SHA-256 of a DER certificate as lowercase colon-separated hex (``ab:cd:...``)."""
    return hashlib.sha256(der).digest().hex(":")


def fingerprint_of_pem(pem: bytes) -> str:
    """Fingerprint of the first certificate in *pem*; InvalidInput when there is none."""
    return fingerprint_of_der(_load_certificate(pem).public_bytes(serialization.Encoding.DER))


def normalize_fingerprint(value: str) -> str:
    """A SHA-256 fingerprint typed by a person (any case, with or without colons) in canonical form."""
    digits = re.sub(r"[\s:]", "", value.strip().lower().removeprefix("sha256:"))
    if not _FINGERPRINT.fullmatch(digits):
        raise InvalidInput("a certificate fingerprint must be a SHA-256 hash: 64 hex digits")
    return bytes.fromhex(digits).hex(":")


def verify_pinned(peer_der: bytes, pinned: str) -> bool:
    """True when the peer's DER certificate has the pinned SHA-256 fingerprint."""
    try:
        expected = normalize_fingerprint(pinned)
    except InvalidInput:
        return False
    return bool(peer_der) and hmac.compare_digest(fingerprint_of_der(peer_der), expected)


# -- helpers --------------------------------------------------------------------------------


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # ECDSA leaves only sign (the TLS handshake); the CA only signs certificates and CRLs.
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(address: str) -> x509.GeneralName:
    value = address.strip().removeprefix("[").removesuffix("]")  # "[::1]" as written in URLs
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.lower().removesuffix(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidInput(
            f"{address!r} is neither an IP address nor a DNS name (letters, digits, '-' and '.'; "
            "use the xn-- form for international names)"
        )
    return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidInput("not a PEM certificate") from None


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    _refuse_open_permissions(key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{cert_path}: cannot read the fleet CA certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"{key_path}: cannot read the fleet CA key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{key_path}: the fleet CA key must be an EC key")
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ConfigurationError(f"{cert_path} and {key_path} do not belong together; restore the pair")
    if cert.not_valid_after_utc <= datetime.now(UTC):
        raise ConfigurationError(
            f"{cert_path}: the fleet CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; agents can no "
            "longer be verified. Move the ca directory away to create a new CA, then re-issue every "
            "agent's certificate"
        )
    return cert, key


def _refuse_open_permissions(path: Path) -> None:
    """Like ssh: a private key readable by group or others is refused, with the fix spelled out."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"{path}: permissions {mode:04o} are too open; the private key must be readable by its "
            f"owner only: run 'chmod 600 {path}'"
        )


def _make_private_dir(path: Path) -> bool:
    """Create *path* (0700) if missing; True when it was created here."""
    if path.is_dir():
        return False
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise ConfigurationError(f"{path}: exists and is not a directory") from None
        return False  # another process was quicker; it set the mode
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot create the fleet CA directory: {exc.strerror}") from None
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return True


@contextmanager
def _locked(ca_dir: Path) -> Iterator[None]:
    try:
        fd = os.open(ca_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        # A read-only CA (mounted from a secret store) needs no lock: nothing will be written,
        # and if something must be, _write_atomic reports why it cannot.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write *path* via a temporary file and rename: readers see the old file or the new one.

    The temporary file is created with *mode* (O_EXCL, no symlink following), so a private key is
    never readable by others, not even for the moment between create and chmod.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits (it never adds any)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigurationError(f"{path}: cannot write: {exc.strerror}") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
