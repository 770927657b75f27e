"""The coordinator's signed instruction: bound to one machine, one key, a time window."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from careline.shared.errors import VerificationError
from careline.shared.instruction import Instruction, sign_instruction, verify_instruction

NOW = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
INSTR = Instruction(
    job_id="j1", machine_id="m1", product="acct", version="2.0", target="acct/acct-2.0.careline",
    sha256="a" * 64, length=10, action="install", stop_product=True, issued_at=NOW,
    expires_at=NOW + timedelta(days=1),
)
KEY = Ed25519PrivateKey.generate()


def test_round_trip() -> None:
    assert verify_instruction(KEY.public_key(), sign_instruction(KEY, INSTR), "m1", NOW) == INSTR


def test_signing_is_deterministic() -> None:
    assert sign_instruction(KEY, INSTR) == sign_instruction(KEY, INSTR)


def test_other_machine_refused() -> None:
    with pytest.raises(VerificationError, match="not m2"):
        verify_instruction(KEY.public_key(), sign_instruction(KEY, INSTR), "m2", NOW)


def test_other_key_refused() -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(VerificationError, match="signed by key"):
        verify_instruction(KEY.public_key(), sign_instruction(other, INSTR), "m1", NOW)


def test_altered_payload_refused() -> None:
    envelope = msgspec.json.decode(sign_instruction(KEY, INSTR))
    forged = msgspec.json.encode(msgspec.structs.replace(INSTR, machine_id="m2"))
    envelope["payload"] = base64.b64encode(forged).decode()
    with pytest.raises(VerificationError, match="signature is invalid"):
        verify_instruction(KEY.public_key(), msgspec.json.encode(envelope), "m2", NOW)


@pytest.mark.parametrize("when", [NOW + timedelta(days=1), NOW - timedelta(hours=1)])
def test_outside_time_window_refused(when: datetime) -> None:
    with pytest.raises(VerificationError):
        verify_instruction(KEY.public_key(), sign_instruction(KEY, INSTR), "m1", when)


@pytest.mark.parametrize("data", [b"", b"{}", b"not json", b'{"payload":"!","signature":"",'
                                  b'"keyid":""}'])
def test_garbage_refused(data: bytes) -> None:
    with pytest.raises(VerificationError):
        verify_instruction(KEY.public_key(), data, "m1", NOW)
