"""SecretBox: AES-256-GCM secrets at rest under a key derived from MYX_SECRET_KEY."""

from __future__ import annotations

import base64

import pytest

from myx.server.errors import ConfigurationError, InvalidInput
from myx.server.security.crypto import WRONG_KEY_MESSAGE, SecretBox

SECRET = "a-long-random-server-secret-for-tests"


@pytest.fixture(scope="module")
def box() -> SecretBox:
    return SecretBox(SECRET)


@pytest.mark.parametrize("plaintext", ["", "agent-token-123", "密码 ✓ pässwörd 🔑", "x" * 10_000, "a\x00b\n"])
def test_round_trip(box: SecretBox, plaintext: str) -> None:
    token = box.encrypt(plaintext)
    assert token.startswith("v1.")
    assert token.isascii()
    assert plaintext not in token or not plaintext
    assert box.decrypt(token) == plaintext


def test_same_secret_gives_a_compatible_box(box: SecretBox) -> None:
    assert SecretBox(SECRET).decrypt(box.encrypt("s3cret")) == "s3cret"


def test_fresh_nonce_every_time(box: SecretBox) -> None:
    tokens = {box.encrypt("same plaintext") for _ in range(50)}
    assert len(tokens) == 50
    nonces = {base64.urlsafe_b64decode(t[3:] + "==")[:12] for t in tokens}
    assert len(nonces) == 50


def test_wrong_key_is_a_configuration_error_naming_the_setting(box: SecretBox) -> None:
    token = box.encrypt("s3cret")
    with pytest.raises(ConfigurationError) as info:
        SecretBox("another-server-secret-entirely").decrypt(token)
    assert info.value.message == WRONG_KEY_MESSAGE
    assert str(info.value) == (
        "cannot decrypt a stored secret: MYX_SECRET_KEY differs from the one it was encrypted with"
    )


def test_tampered_token_fails(box: SecretBox) -> None:
    token = box.encrypt("s3cret")
    raw = bytearray(base64.urlsafe_b64decode(token[3:] + "=="))
    for index in (0, 12, len(raw) - 1):  # nonce, ciphertext, tag
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        forged = "v1." + base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
        with pytest.raises(ConfigurationError):
            box.decrypt(forged)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1.",
        "v1",
        "plaintext-password",
        "v2.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.not base64!",
        "v1.AAAA",  # valid base64, too short for a nonce and a tag
        "v1.ÄÖÜ",
        "v1.AAAAAAAAAAAAAAAAAAAAAAAA*AAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_token_is_invalid_input(box: SecretBox, token: str) -> None:
    with pytest.raises(InvalidInput):
        box.decrypt(token)


def test_aad_binds_the_ciphertext_to_its_place(box: SecretBox) -> None:
    token = box.encrypt("s3cret", aad="hosts.agent_token:1")
    assert box.decrypt(token, aad="hosts.agent_token:1") == "s3cret"
    with pytest.raises(ConfigurationError):
        box.decrypt(token, aad="hosts.agent_token:2")
    with pytest.raises(ConfigurationError):
        box.decrypt(token)
    with pytest.raises(ConfigurationError):
        box.decrypt(box.encrypt("s3cret"), aad="hosts.agent_token:1")


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        SecretBox("")


def test_repr_hides_the_key(box: SecretBox) -> None:
    assert SECRET not in repr(box)
