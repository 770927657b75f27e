"""Keys, signatures, tokens and join strings: the identity material both sides share.

An agent is its Ed25519 key: its id is derived from the public key (so an id cannot be
claimed without the key), and every connection proves possession by signing a fresh
server nonce. Tokens are random secrets whose SHA-256 alone is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

from careline.shared.errors import AuthError, ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# `cryptography` is imported inside the functions that use it: the running agent signs its
# challenges through careline.agent.signer and never loads it (~7 MB of its memory).

_AUTH_CONTEXT = b"careline-agent-auth-v2\x00"
JOIN_SCHEME = "careline+wss"


class Signer(Protocol):
    """An Ed25519 private key as far as signing challenges goes."""

    def sign(self, data: bytes) -> bytes: ...


def generate_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a private key readable by its owner only (0600 from the first byte)."""
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"no key at {path}") from None
    except ValueError as exc:
        raise ConfigError(f"unreadable key at {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agent_id_for(public_key: bytes) -> str:
    """Stable, unforgeable agent id: a short hash of the raw public key."""
    digest = hashlib.sha256(b"careline-agent-id\x00" + public_key).digest()
    return "ag-" + base64.b32encode(digest[:10]).decode().lower()


AGENT_ID_SHAPE = re.compile(r"ag-[a-z2-7]{16}", re.IGNORECASE)


def looks_like_agent_id(text: str) -> bool:
    """Shaped like `agent_id_for`'s output: such a hostname is refused at enrollment, so a
    machine's name can never pass for another machine's id."""
    return AGENT_ID_SHAPE.fullmatch(text.strip()) is not None


def auth_payload(nonce: bytes, agent_id: str) -> bytes:
    """What an agent signs: the nonce is length-prefixed so no (nonce, id) pair can pass
    for another."""
    return _AUTH_CONTEXT + len(nonce).to_bytes(2, "big") + nonce + agent_id.encode()


def sign_challenge(key: Signer, nonce: bytes, agent_id: str) -> bytes:
    return key.sign(auth_payload(nonce, agent_id))


def verify_challenge(public_key: bytes, signature: bytes, nonce: bytes, agent_id: str) -> None:
    """Raise AuthError unless `signature` is the agent's signature of this very nonce."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, auth_payload(nonce, agent_id)
        )
    except (InvalidSignature, ValueError):
        raise AuthError("signature does not match this connection's challenge") from None


# ----------------------------------------------------------------------------- tokens
def new_token(prefix: str) -> str:
    """A 256-bit random secret, prefixed so a leaked one is recognisable ('cle', 'clt')."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    """What is stored instead of the token. Tokens are random, so a plain hash suffices."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# ----------------------------------------------------------------------------- CA pinning
def cert_fingerprint(cert_pem: bytes | str) -> str:
    """SHA-256 of the certificate's DER form, hex: what a join string pins."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def root_pin(root_json: bytes) -> str:
    """SHA-256 of the vendor's first TUF root (1.root.json), hex: what a join string pins so
    that the update trust anchor never comes from the coordinator alone. Later roots are
    reached from it through the TUF chain, so the pin survives key rotations."""
    return hashlib.sha256(root_json).hexdigest()


def _is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def check_issued_by(leaf_der: bytes, ca_pem: str) -> None:
    """Raise AuthError unless the server's leaf certificate was signed by the pinned CA."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise AuthError(f"server certificate is not issued by the pinned CA: {exc}") from None


@dataclass(frozen=True)
class JoinString:
    """What `careline tokens create` prints and `careline-agent enroll` takes:
    where the coordinator is, the one-time token, the CA fingerprint to pin and, once
    release keys exist, the update root to pin (`root_pin`)."""

    server_url: str  # wss://host:port
    token: str
    ca_fingerprint: str
    root_pin: str = ""  # empty: made before the vendor had release keys

    def __str__(self) -> str:
        parts = urlsplit(self.server_url)
        fields = {"token": self.token, "ca": self.ca_fingerprint}
        if self.root_pin:
            fields["root"] = self.root_pin
        return f"{JOIN_SCHEME}://{parts.netloc}/?{urlencode(fields)}"

    @classmethod
    def parse(cls, text: str) -> JoinString:
        parts = urlsplit(text.strip())
        query = parse_qs(parts.query)
        token = query.get("token", [""])[0]
        ca = query.get("ca", [""])[0].lower()
        if parts.scheme != JOIN_SCHEME or not parts.netloc or not token:
            raise ConfigError(
                "not a join string: expected careline+wss://HOST:PORT/?token=...&ca=..."
            )
        if not _is_sha256_hex(ca):
            raise ConfigError("join string has no valid CA fingerprint (64 hex digits)")
        root = query.get("root", [""])[0].lower()
        if root and not _is_sha256_hex(root):
            raise ConfigError("join string's update root pin is not 64 hex digits")
        return cls(server_url=f"wss://{parts.netloc}", token=token, ca_fingerprint=ca,
                   root_pin=root)
