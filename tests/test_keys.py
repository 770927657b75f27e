"""shared.keys: agent identity, challenge signatures, tokens, join strings and CA pinning."""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from careline.coordinator.pki import create_pki
from careline.shared.errors import AuthError, ConfigError
from careline.shared.keys import (
    JoinString,
    agent_id_for,
    auth_payload,
    cert_fingerprint,
    check_issued_by,
    generate_key,
    load_or_create_private_key,
    load_private_key,
    new_token,
    public_bytes,
    same_secret,
    save_private_key,
    sign_challenge,
    token_hash,
    verify_challenge,
)

KEY = generate_key()
PUB = public_bytes(KEY)
AGENT = agent_id_for(PUB)
OTHER_KEY = generate_key()


# ----------------------------------------------------------------------------- agent ids
def test_agent_id_is_stable_and_shaped() -> None:
    assert agent_id_for(PUB) == agent_id_for(bytes(PUB)) == AGENT
    assert agent_id_for(public_bytes(KEY.public_key())) == AGENT
    assert AGENT.startswith("ag-")
    body = AGENT.removeprefix("ag-")
    assert len(body) == 16
    assert set(body) <= set("abcdefghijklmnopqrstuvwxyz234567")


def test_agent_id_survives_saving_and_loading_the_key(tmp_path: Path) -> None:
    save_private_key(KEY, tmp_path / "agent.key")
    assert agent_id_for(public_bytes(load_private_key(tmp_path / "agent.key"))) == AGENT


def test_agent_ids_are_distinct_per_key() -> None:
    keys = [generate_key() for _ in range(64)]
    assert len({public_bytes(k) for k in keys}) == 64
    assert len({agent_id_for(public_bytes(k)) for k in keys}) == 64


@given(a=st.binary(min_size=32, max_size=32), b=st.binary(min_size=32, max_size=32))
def test_agent_id_differs_for_different_public_keys(a: bytes, b: bytes) -> None:
    assert (agent_id_for(a) == agent_id_for(b)) == (a == b)


def test_public_bytes_is_raw_32_bytes() -> None:
    assert len(PUB) == 32
    assert public_bytes(KEY) == public_bytes(KEY.public_key())
    assert public_bytes(OTHER_KEY) != PUB


# ----------------------------------------------------------------------------- challenges
def test_challenge_signature_verifies_for_the_same_nonce_and_agent() -> None:
    nonce = os.urandom(32)
    signature = sign_challenge(KEY, nonce, AGENT)
    assert len(signature) == 64
    verify_challenge(PUB, signature, nonce, AGENT)  # no exception


@settings(max_examples=50)
@given(nonce=st.binary(min_size=32, max_size=32), other=st.binary(min_size=32, max_size=32))
def test_challenge_signature_fails_for_any_other_nonce(nonce: bytes, other: bytes) -> None:
    signature = sign_challenge(KEY, nonce, AGENT)
    verify_challenge(PUB, signature, nonce, AGENT)
    if other != nonce:
        with pytest.raises(AuthError, match="does not match"):
            verify_challenge(PUB, signature, other, AGENT)


@settings(max_examples=50)
@given(other_id=st.text(min_size=1, max_size=30))
def test_challenge_signature_fails_for_another_agent_id(other_id: str) -> None:
    nonce = b"\x01" * 32
    signature = sign_challenge(KEY, nonce, AGENT)
    if other_id != AGENT:
        with pytest.raises(AuthError):
            verify_challenge(PUB, signature, nonce, other_id)


def test_challenge_signed_by_another_key_fails() -> None:
    nonce = os.urandom(32)
    forged = sign_challenge(OTHER_KEY, nonce, AGENT)
    with pytest.raises(AuthError):
        verify_challenge(PUB, forged, nonce, AGENT)
    # ... and the real signature does not verify under the other key either.
    with pytest.raises(AuthError):
        verify_challenge(public_bytes(OTHER_KEY), sign_challenge(KEY, nonce, AGENT), nonce, AGENT)


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        (PUB[:31], None),  # malformed key
        (b"", None),
        (PUB, b""),  # malformed signatures
        (PUB, b"\x00" * 64),
        (PUB, b"\x00" * 63),
    ],
    ids=["short-key", "empty-key", "empty-signature", "zero-signature", "short-signature"],
)
def test_malformed_key_or_signature_is_an_auth_error(
    public_key: bytes, signature: bytes | None
) -> None:
    nonce = os.urandom(32)
    sig = sign_challenge(KEY, nonce, AGENT) if signature is None else signature
    with pytest.raises(AuthError):
        verify_challenge(public_key, sig, nonce, AGENT)


def test_tampered_signature_fails() -> None:
    nonce = os.urandom(32)
    sig = bytearray(sign_challenge(KEY, nonce, AGENT))
    sig[10] ^= 1
    with pytest.raises(AuthError):
        verify_challenge(PUB, bytes(sig), nonce, AGENT)


def test_auth_payload_is_domain_separated() -> None:
    # A signature over the bare nonce (something else the key might sign) is not a hello.
    nonce = os.urandom(32)
    assert auth_payload(nonce, AGENT) != nonce + AGENT.encode()
    with pytest.raises(AuthError):
        verify_challenge(PUB, KEY.sign(nonce + AGENT.encode()), nonce, AGENT)


def test_signature_binds_the_split_between_nonce_and_agent_id() -> None:
    nonce = b"\x00" * 31 + b"a"
    signature = sign_challenge(KEY, nonce, "g-x")
    with pytest.raises(AuthError):
        verify_challenge(PUB, signature, nonce[:-1], "ag-x")


# ----------------------------------------------------------------------------- keys on disk
@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_save_private_key_is_owner_only_and_loads_back(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "agent.key"
    save_private_key(KEY, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_bytes(load_private_key(path)) == PUB


def test_save_private_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    save_private_key(KEY, path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_private_key(OTHER_KEY, path)
    assert path.read_bytes() == before
    assert public_bytes(load_private_key(path)) == PUB


def test_save_private_key_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "agent.key").symlink_to(target)
    with pytest.raises(FileExistsError):
        save_private_key(KEY, tmp_path / "agent.key")
    assert not target.exists()


def test_load_private_key_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no key"):
        load_private_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="unreadable"):
        load_private_key(tmp_path / "junk.key")
    create_pki(tmp_path / "pki", ["localhost"])  # ca.key is an EC key, not Ed25519
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(tmp_path / "pki" / "ca.key")


# ----------------------------------------------------------------------------- tokens
def test_new_tokens_are_prefixed_random_and_long() -> None:
    tokens = {new_token("cle") for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        prefix, secret = token.split("_", 1)
        assert prefix == "cle"
        assert len(secret) >= 43  # 32 random bytes, urlsafe base64
    assert new_token("clt").startswith("clt_")


@given(token=st.text(min_size=1, max_size=80))
def test_token_hash_is_not_the_token(token: str) -> None:
    digest = token_hash(token)
    assert digest != token
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")


def test_token_hash_is_deterministic_and_distinct() -> None:
    a, b = new_token("cle"), new_token("cle")
    assert token_hash(a) == token_hash(a)
    assert token_hash(a) != token_hash(b)
    assert a not in token_hash(a)


def test_same_secret() -> None:
    assert same_secret("abc", "abc")
    assert not same_secret("abc", "abd")
    assert not same_secret("abc", "abcd")
    assert same_secret("čau", "čau")


# ----------------------------------------------------------------------------- join strings
FINGERPRINT = "ab" * 32

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
ports = st.integers(min_value=1, max_value=65535)
tokens = st.text(min_size=1, max_size=60)
fingerprints = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=200)
@given(host=hostnames | ipv4 | ipv6, port=ports, token=tokens, ca=fingerprints)
def test_join_string_round_trips(host: str, port: int, token: str, ca: str) -> None:
    join = JoinString(server_url=f"wss://{host}:{port}", token=token, ca_fingerprint=ca)
    text = str(join)
    assert text.startswith(f"careline+wss://{host}:{port}/?")
    assert JoinString.parse(text) == join
    assert JoinString.parse(f"  {text}\n") == join  # pasted with whitespace


@given(token=st.from_regex(r"cle_[A-Za-z0-9_-]{43}", fullmatch=True))
def test_real_tokens_appear_verbatim_in_the_join_string(token: str) -> None:
    text = str(JoinString("wss://coord.example:8443", token, FINGERPRINT))
    assert f"token={token}" in text
    assert f"ca={FINGERPRINT}" in text


def test_join_string_lowercases_the_fingerprint() -> None:
    upper = FINGERPRINT.upper()
    parsed = JoinString.parse(f"careline+wss://h:1/?token=t&ca={upper}")
    assert parsed.ca_fingerprint == FINGERPRINT
    assert parsed.server_url == "wss://h:1"
    assert parsed.token == "t"


def test_join_string_ignores_path_of_server_url() -> None:
    join = JoinString("wss://h:443/agent", "t", FINGERPRINT)
    assert JoinString.parse(str(join)).server_url == "wss://h:443"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"wss://h:1/?token=t&ca={FINGERPRINT}", "not a join string"),
        (f"https://h:1/?token=t&ca={FINGERPRINT}", "not a join string"),
        (f"careline+ws://h:1/?token=t&ca={FINGERPRINT}", "not a join string"),
        (f"CARELINE+WSX://h:1/?token=t&ca={FINGERPRINT}", "not a join string"),
        (f"careline+wss://h:1/?ca={FINGERPRINT}", "not a join string"),
        (f"careline+wss://h:1/?token=&ca={FINGERPRINT}", "not a join string"),
        (f"careline+wss:///?token=t&ca={FINGERPRINT}", "not a join string"),
        ("", "not a join string"),
        ("careline+wss://h:1/?token=t", "CA fingerprint"),
        ("careline+wss://h:1/?token=t&ca=", "CA fingerprint"),
        (f"careline+wss://h:1/?token=t&ca={FINGERPRINT[:-1]}", "CA fingerprint"),
        (f"careline+wss://h:1/?token=t&ca={FINGERPRINT}0", "CA fingerprint"),
        (f"careline+wss://h:1/?token=t&ca={'g' * 64}", "CA fingerprint"),
        (f"careline+wss://h:1/?token=t&ca={'a' * 62}%20a", "CA fingerprint"),
    ],
)
def test_bad_join_strings_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JoinString.parse(text)


# ----------------------------------------------------------------------------- CA pinning
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    create_pki(root / "one", ["coord.example", "127.0.0.1"])
    create_pki(root / "two", ["coord.example", "127.0.0.1"])
    return {"one": root / "one", "two": root / "two"}


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_cert_fingerprint_is_sha256_of_der(pki: dict[str, Path]) -> None:
    ca = pki["one"] / "ca.pem"
    expected = hashlib.sha256(der(ca)).hexdigest()
    assert cert_fingerprint(ca.read_bytes()) == expected
    assert cert_fingerprint(ca.read_text()) == expected
    assert cert_fingerprint(ca.read_text()) != cert_fingerprint((pki["two"] / "ca.pem").read_text())
    # What a join string pins parses back unchanged.
    join = JoinString("wss://coord.example:8443", "t", expected)
    assert JoinString.parse(str(join)).ca_fingerprint == expected


def test_cert_fingerprint_of_garbage_raises(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="Unable to load PEM"):
        cert_fingerprint("not a certificate")


def test_server_cert_is_issued_by_its_own_ca(pki: dict[str, Path]) -> None:
    check_issued_by(der(pki["one"] / "server.pem"), (pki["one"] / "ca.pem").read_text())
    check_issued_by(der(pki["two"] / "server.pem"), (pki["two"] / "ca.pem").read_text())


def test_leaf_from_a_different_ca_is_refused(pki: dict[str, Path]) -> None:
    # Both CAs carry the same subject name, so only the signature tells them apart.
    one = x509.load_pem_x509_certificate((pki["one"] / "ca.pem").read_bytes())
    two = x509.load_pem_x509_certificate((pki["two"] / "ca.pem").read_bytes())
    assert one.subject == two.subject
    with pytest.raises(AuthError, match="not issued by the pinned CA"):
        check_issued_by(der(pki["two"] / "server.pem"), (pki["one"] / "ca.pem").read_text())
    with pytest.raises(AuthError):
        check_issued_by(der(pki["one"] / "server.pem"), (pki["two"] / "ca.pem").read_text())


@pytest.mark.parametrize("leaf", [b"", b"\x30\x03\x02\x01\x01", b"garbage"])
def test_unparseable_leaf_is_refused(pki: dict[str, Path], leaf: bytes) -> None:
    with pytest.raises(AuthError):
        check_issued_by(leaf, (pki["one"] / "ca.pem").read_text())


def test_unparseable_pinned_ca_is_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(AuthError):
        check_issued_by(der(pki["one"] / "server.pem"), "not a pem")


def test_pki_files_and_modes(pki: dict[str, Path]) -> None:
    for name in ("ca.key", "server.key"):
        assert stat.S_IMODE((pki["one"] / name).stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate((pki["one"] / "server.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "coord.example" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    key = serialization.load_pem_private_key((pki["one"] / "server.key").read_bytes(), None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]


def test_processes_starting_at_once_share_one_created_key(tmp_path):
    """Two coordinator processes on a fresh data dir: the second finds the file the first
    created but has not written yet, waits, and loads the same key (it used to crash)."""
    path = tmp_path / "releases" / "instruction.key"
    first = load_or_create_private_key(path)
    assert public_bytes(load_or_create_private_key(path)) == public_bytes(first)

    racing = tmp_path / "racing.key"
    racing.touch(mode=0o600)  # the other process's O_EXCL open, before its write
    theirs = generate_key()

    def write_late() -> None:
        time.sleep(0.2)
        racing.unlink()
        save_private_key(theirs, racing)

    writer = threading.Thread(target=write_late)
    writer.start()
    try:
        assert public_bytes(load_or_create_private_key(racing)) == public_bytes(theirs)
    finally:
        writer.join()


def test_a_key_that_never_arrives_is_an_error(tmp_path):
    empty = tmp_path / "empty.key"
    empty.touch()
    with pytest.raises(ConfigError):
        load_or_create_private_key(empty, wait=0.1)
