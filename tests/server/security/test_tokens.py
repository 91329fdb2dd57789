"""Passwords, API tokens and agent credentials."""

from __future__ import annotations

import hashlib
import re

import pytest
from argon2 import PasswordHasher

from myx.server.errors import InvalidInput
from myx.server.security.tokens import (
    PASSWORD_ALPHABET,
    generate_password,
    hash_password,
    hash_token_secret,
    needs_rehash,
    new_api_token,
    parse_api_token,
    random_agent_secret,
    random_agent_token,
    random_rpc_path,
    token_matches,
    verify_password,
)

URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def test_password_hash_and_verify() -> None:
    hashed = hash_password("correct horse battery staple ✓")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert verify_password(hashed, "correct horse battery staple ✓")
    assert not verify_password(hashed, "correct horse battery staple")
    assert not verify_password(hashed, "")
    assert hash_password("same") != hash_password("same")  # salted


@pytest.mark.parametrize("stored", ["", "garbage", "$argon2id$v=19$m=1,t=1,p=1$bad$bad", "$2b$12$abc"])
def test_verify_never_raises_on_unreadable_hash(stored: str) -> None:
    assert verify_password(stored, "anything") is False


def test_empty_password_is_refused() -> None:
    with pytest.raises(InvalidInput):
        hash_password("")


def test_needs_rehash() -> None:
    assert not needs_rehash(hash_password("pw"))
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw")
    assert verify_password(weak, "pw")
    assert needs_rehash(weak)
    assert needs_rehash("garbage")


def test_generate_password() -> None:
    passwords = {generate_password() for _ in range(200)}
    assert len(passwords) == 200
    for pw in passwords:
        assert len(pw) == 20
        assert set(pw) <= set(PASSWORD_ALPHABET)
    assert not set("0O1lI") & set(PASSWORD_ALPHABET)
    assert len(generate_password(32)) == 32
    with pytest.raises(InvalidInput):
        generate_password(4)


def test_new_api_token_parses_back() -> None:
    token_id, full, secret_hash = new_api_token()
    assert re.fullmatch(r"[0-9a-f]{12}", token_id)
    assert full.startswith(f"myx_{token_id}_")
    parsed = parse_api_token(full)
    assert parsed is not None
    parsed_id, secret = parsed
    assert parsed_id == token_id
    assert full == f"myx_{token_id}_{secret}"
    assert len(secret) >= 43
    assert secret_hash == hashlib.sha256(secret.encode()).hexdigest() == hash_token_secret(secret)
    assert token_matches(secret, secret_hash)
    assert parse_api_token(f"  {full}\n") == parsed


def test_api_tokens_are_unique_and_secrets_with_underscores_parse() -> None:
    tokens = [new_api_token() for _ in range(300)]
    assert len({t[0] for t in tokens}) == 300
    for token_id, full, secret_hash in tokens:
        parsed = parse_api_token(full)
        assert parsed is not None
        assert parsed[0] == token_id
        assert token_matches(parsed[1], secret_hash)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "myx_",
        "myx__",
        "Bearer myx_0123456789ab_" + "a" * 43,
        "myx_0123456789ab",
        "myx_0123456789ab_",
        "myx_0123456789AB_" + "a" * 43,  # uppercase id
        "myx_0123456789a_" + "a" * 43,  # short id
        "myx_0123456789abc_" + "a" * 43,  # long id
        "xyz_0123456789ab_" + "a" * 43,
        "myx_0123456789ab_short",
        "myx_0123456789ab_" + "a" * 42 + "!",
        "myx_0123456789ab_" + "ä" * 43,
        "myx_0123456789ab_" + "a" * 43 + "\x00",
        "myx_0123456789ab_" + "a" * 20 + " " + "a" * 22,
        "myx_0123456789ab_" + "a" * 1000,
        "\ud800",
    ],
)
def test_parse_api_token_returns_none_for_garbage(garbage: str) -> None:
    assert parse_api_token(garbage) is None


def test_token_matches_rejects_wrong_secret_and_corrupt_hash() -> None:
    _, full, secret_hash = new_api_token()
    parsed = parse_api_token(full)
    assert parsed is not None
    secret = parsed[1]
    assert not token_matches(secret + "x", secret_hash)
    assert not token_matches(secret[:-1], secret_hash)
    assert not token_matches("", secret_hash)
    assert not token_matches(secret, secret_hash.upper())
    assert not token_matches(secret, "")
    assert not token_matches(secret, "é" * 64)  # non-ASCII stored value: no match, no TypeError
    assert not token_matches("\udcff", secret_hash)


def test_rpc_path_charset_and_length() -> None:
    paths = {random_rpc_path() for _ in range(2000)}
    assert len(paths) == 2000
    for path in paths:
        assert 16 <= len(path) <= 32  # seed 001
        assert URL_SAFE.fullmatch(path)
        # What the agent's config accepts.
        assert re.fullmatch(r"[A-Za-z0-9_-]{8,128}", path)
    # Over many draws every character of the alphabet shows up: no accidental narrowing.
    assert set("".join(paths)) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def test_agent_token_and_secret() -> None:
    tokens = {random_agent_token() for _ in range(500)}
    assert len(tokens) == 500
    assert all(len(t) == 48 and URL_SAFE.fullmatch(t) for t in tokens)
    secrets_ = {random_agent_secret() for _ in range(500)}
    assert len(secrets_) == 500
    assert all(len(s) >= 43 and URL_SAFE.fullmatch(s) for s in secrets_)
