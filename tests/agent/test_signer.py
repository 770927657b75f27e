"""agent.signer: the running agent signs challenges through libcrypto, byte for byte what
`cryptography` signs, and refuses key files that are not an Ed25519 PKCS#8 key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from careline.agent.signer import LibcryptoSigner, find_libcrypto, load_signer, seed_from_pem
from careline.shared.errors import ConfigError
from careline.shared.keys import (
    agent_id_for,
    auth_payload,
    generate_key,
    public_bytes,
    save_private_key,
    sign_challenge,
    verify_challenge,
)

LIB = find_libcrypto()
needs_lib = pytest.mark.skipif(LIB is None, reason="this Python's ssl has no libcrypto with Ed25519")


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=2048))
@settings(max_examples=200, deadline=None)
def test_seed_round_trip_and_same_signature_as_cryptography(seed: bytes, message: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    assert seed_from_pem(pem(key)) == seed
    if LIB is not None:  # Ed25519 is deterministic: the very same bytes
        assert LibcryptoSigner(LIB, seed).sign(message) == key.sign(message)


@needs_lib
def test_load_signer_uses_libcrypto_and_passes_the_coordinator_check(tmp_path: Path) -> None:
    key = generate_key()
    save_private_key(key, tmp_path / "agent.key")
    signer = load_signer(tmp_path / "agent.key")
    assert isinstance(signer, LibcryptoSigner)
    agent_id = agent_id_for(public_bytes(key))
    nonce = b"\x01" * 32
    verify_challenge(public_bytes(key), sign_challenge(signer, nonce, agent_id), nonce, agent_id)
    assert signer.sign(auth_payload(nonce, agent_id)) == key.sign(auth_payload(nonce, agent_id))


@pytest.mark.parametrize("text", [
    b"",
    b"garbage",
    b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(b"\x30" * 48) + b"\n-----END PRIVATE KEY-----",
    # an Ed448 key (RFC 8410 OID 1.3.101.113) is not ours
    b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(
        bytes.fromhex("3047020100300506032b6571043b0439") + b"\x00" * 57) + b"\n-----END PRIVATE KEY-----",
])
def test_bad_key_files_are_refused(text: bytes) -> None:
    with pytest.raises(ConfigError):
        seed_from_pem(text)


def test_missing_or_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no key"):
        load_signer(tmp_path / "absent.key")
    (tmp_path / "bad.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="unreadable key"):
        load_signer(tmp_path / "bad.key")
