"""The coordinator's per-machine install instruction (Uptane's "director" role).

The vendor's signed targets metadata says which packages exist; the instruction says which
one *this* machine installs now. The agent acts only when both agree on the target path,
sha256 and length, so neither a stolen online key nor a stolen release key alone can make a
machine install something.

Wire format: a JSON envelope holding the exact signed payload bytes (base64), the Ed25519
signature over a domain-separated message, and the key id. Verifying the payload bytes as
received avoids any re-canonicalisation on the agent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import datetime, timedelta
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from careline.shared.errors import VerificationError

_DOMAIN = b"careline-instruction-v1\x00"
# Tolerated clock difference between coordinator and customer PC for `issued_at`.
CLOCK_SKEW = timedelta(minutes=10)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Action = Literal["install", "reinstall"]


class Instruction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    job_id: str
    machine_id: str
    product: str
    version: str
    target: str  # the TUF target path, e.g. "acct/acct-2.1.0.careline"
    sha256: str
    length: int
    action: Action
    # True: the agent may stop the running product (and start it again afterwards).
    stop_product: bool
    issued_at: datetime
    expires_at: datetime


class _Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload: str
    signature: str
    keyid: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint so a refusal can say *which* key signed."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _check_fields(instr: Instruction) -> None:
    for name in ("issued_at", "expires_at"):
        value: datetime = getattr(instr, name)
        if value.tzinfo is None or value.utcoffset() != timedelta(0):
            raise VerificationError(f"instruction {name} must be UTC")
    if not _SHA256.match(instr.sha256):
        raise VerificationError("instruction sha256 must be 64 lowercase hex digits")
    if instr.length <= 0:
        raise VerificationError("instruction length must be positive")
    if not instr.job_id or not instr.machine_id:
        raise VerificationError("instruction needs a job id and a machine id")


def sign_instruction(private_key: Ed25519PrivateKey, instr: Instruction) -> bytes:
    """The envelope bytes the coordinator sends (or writes into a bundle)."""
    _check_fields(instr)
    payload = msgspec.json.encode(instr)
    signature = private_key.sign(_DOMAIN + payload)
    envelope = _Envelope(
        payload=base64.b64encode(payload).decode(),
        signature=base64.b64encode(signature).decode(),
        keyid=key_id(private_key.public_key()),
    )
    return msgspec.json.encode(envelope)


def verify_instruction(
    public_key: Ed25519PublicKey, data: bytes, machine_id: str, now: datetime
) -> Instruction:
    """The instruction in `data`, if the coordinator signed it for this machine and it is current.

    Raises VerificationError naming the failed check otherwise.
    """
    try:
        envelope = msgspec.json.decode(data, type=_Envelope)
        payload = base64.b64decode(envelope.payload, validate=True)
        signature = base64.b64decode(envelope.signature, validate=True)
    except (msgspec.DecodeError, binascii.Error, ValueError):
        raise VerificationError("instruction is not a valid signed envelope") from None
    expected = key_id(public_key)
    if envelope.keyid != expected:
        raise VerificationError(
            f"instruction signed by key {envelope.keyid}, this agent trusts {expected}"
        )
    try:
        public_key.verify(signature, _DOMAIN + payload)
    except InvalidSignature:
        raise VerificationError("instruction signature is invalid") from None
    try:
        instr = msgspec.json.decode(payload, type=Instruction)
    except msgspec.DecodeError as exc:
        raise VerificationError(f"instruction payload is invalid: {exc}") from None
    _check_fields(instr)
    if instr.machine_id != machine_id:
        raise VerificationError(
            f"instruction {instr.job_id} is for machine {instr.machine_id}, not {machine_id}"
        )
    if now >= instr.expires_at:
        raise VerificationError(f"instruction {instr.job_id} expired at {instr.expires_at}")
    if instr.issued_at > now + CLOCK_SKEW:
        raise VerificationError(
            f"instruction {instr.job_id} is issued in the future ({instr.issued_at}); "
            "check this PC's clock"
        )
    return instr
