"""The agent's TLS key pair: use the configured files, or generate a self-signed pair once.

The agent has no compiled dependencies, so generation shells out to the host's ``openssl``
(argv only, never a shell string).  Normally the control server's fleet CA issues the
certificate; the self-signed pair is the fallback seed 002 describes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from typing import List

from myx.agent.config import AgentConfig, insecure_mode_problem
from myx.agent.errors import CertificateError

log = logging.getLogger(__name__)

_VALIDITY_DAYS = "3650"


def ensure_certificate(config: AgentConfig) -> bool:
    """Make sure the certificate and key exist and the key is private; True when generated."""
    cert, key = config.certificate_path, config.private_key_path
    have_cert, have_key = os.path.exists(cert), os.path.exists(key)
    if have_cert and have_key:
        problem = insecure_mode_problem(key)
        if problem:
            raise CertificateError(problem)
        return False
    if have_cert or have_key:
        missing = key if have_cert else cert
        raise CertificateError(
            f"{missing}: not found, but its pair exists; restore it, or remove both files so the "
            "agent generates a new self-signed pair"
        )
    generate_self_signed(cert, key)
    return True


def generate_self_signed(cert_path: str, key_path: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError(
            "no TLS certificate configured and the 'openssl' command is not installed: install it "
            "(apt-get install openssl, dnf install openssl) or put a certificate and key at "
            f"{cert_path} and {key_path}"
        )
    for folder in {os.path.dirname(cert_path), os.path.dirname(key_path)}:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=".myx-cert-", dir=os.path.dirname(key_path))
    try:
        tmp_cert, tmp_key = os.path.join(workdir, "agent.crt"), os.path.join(workdir, "agent.key")
        _run_openssl(_argv(openssl, tmp_cert, tmp_key, with_san=True), _argv(openssl, tmp_cert, tmp_key))
        os.chmod(tmp_key, 0o600)
        os.chmod(tmp_cert, 0o644)
        os.replace(tmp_key, key_path)
        os.replace(tmp_cert, cert_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("generated a self-signed TLS certificate cert=%s key=%s", cert_path, key_path)


def _argv(openssl: str, cert: str, key: str, with_san: bool = False) -> List[str]:
    name = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "myx-agent"
    argv = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-sha256", "-days", _VALIDITY_DAYS, "-subj", f"/CN={name}",
        "-keyout", key, "-out", cert,
    ]  # fmt: skip
    if with_san:
        argv += ["-addext", f"subjectAltName=DNS:{name},DNS:localhost,IP:127.0.0.1,IP:::1"]
    return argv


def _run_openssl(first: List[str], fallback: List[str]) -> None:
    # OpenSSL before 1.1.1 has no -addext: retry without the subjectAltName rather than fail.
    old = os.umask(0o077)
    try:
        for argv in (first, fallback):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if proc.returncode == 0:
                return
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CertificateError(
            f"openssl failed to generate a certificate: {detail[-1] if detail else proc.returncode}"
        )
    except subprocess.TimeoutExpired:
        raise CertificateError("openssl did not finish generating a certificate within 60 s") from None
    finally:
        os.umask(old)
