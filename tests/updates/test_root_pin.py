"""The update trust root never comes from the coordinator alone (issue 12, item 5): join
strings pin the hash of the vendor's first root, an agent takes no first root that does not
match its pin, and an agent without a pin takes none until a local `pin-root`."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from careline.agent.state import StateDir
from careline.agent.updater import accept_first_root, pin_root, pinned_root, store_enrollment_trust
from careline.shared.bundle import open_bundle
from careline.shared.errors import ConfigError, VerificationError
from careline.shared.keys import JoinString, public_bytes, root_pin
from careline.shared.trust import AgentTrust, OnlineRepository, init_release_keys

CA = "ab" * 32


def vendor_root(tmp: Path, name: str) -> tuple[OnlineRepository, bytes]:
    repo = OnlineRepository(tmp / name / "releases")
    metadata = init_release_keys(tmp / name / "keys", repo.online_public_keys())
    repo.publish(root=metadata.root, targets=metadata.targets)
    return repo, repo.enrollment_root()


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "agent")
    state.path.mkdir()
    return state


def test_join_string_carries_the_root_pin() -> None:
    pin = "cd" * 32
    join = JoinString("wss://h:8443", "cle_x", CA, pin)
    assert "root=" + pin in str(join)
    assert JoinString.parse(str(join)) == join
    assert JoinString.parse(str(JoinString("wss://h:8443", "cle_x", CA))).root_pin == ""
    with pytest.raises(ConfigError, match="root pin"):
        JoinString.parse(str(join).replace(pin, "zz" * 32))
    with pytest.raises(ConfigError, match="root pin"):
        JoinString.parse(str(join).replace(pin, pin[:10]))


def test_enrollment_refuses_a_root_that_is_not_the_pinned_one(tmp_path: Path, state: StateDir):
    _, genuine = vendor_root(tmp_path, "vendor")
    _, forged = vendor_root(tmp_path, "attacker")
    key = public_bytes(Ed25519PrivateKey.generate())
    with pytest.raises(VerificationError, match="does not match"):
        store_enrollment_trust(state, forged, key, root_pin(genuine))
    with pytest.raises(VerificationError, match="sent none"):
        store_enrollment_trust(state, b"", key, root_pin(genuine))
    assert list(state.path.iterdir()) == []  # refused before anything was written
    store_enrollment_trust(state, genuine, key, root_pin(genuine))
    assert (state.path / "tuf" / "enrollment-root.json").read_bytes() == genuine
    assert pinned_root(state) == root_pin(genuine)


def test_without_a_pin_no_root_is_taken_from_the_coordinator(tmp_path: Path, state: StateDir):
    repo, genuine = vendor_root(tmp_path, "vendor")
    _, forged = vendor_root(tmp_path, "attacker")
    store_enrollment_trust(state, genuine, public_bytes(Ed25519PrivateKey.generate()))
    assert not (state.path / "tuf").exists()
    with pytest.raises(ConfigError, match="pin-root"):
        accept_first_root(state, genuine)
    pin_root(state, root_pin(genuine).upper())
    with pytest.raises(VerificationError, match="does not match"):
        accept_first_root(state, forged)
    assert not (state.path / "tuf").exists()
    accept_first_root(state, genuine)
    AgentTrust(state.path, repo.read_metadata).refresh()  # and the TUF chain works from it


def test_pin_root_drops_an_anchor_that_does_not_match(tmp_path: Path, state: StateDir):
    _, genuine = vendor_root(tmp_path, "vendor")
    _, forged = vendor_root(tmp_path, "attacker")
    # Enrolled by older code, which took whatever root the coordinator sent.
    store_enrollment_trust(state, forged, b"", root_pin(forged))
    pin_root(state, root_pin(genuine))
    assert not (state.path / "tuf").exists()  # the next update fetches root v1 again
    with pytest.raises(ConfigError, match="64 hex"):
        pin_root(state, "not-a-hash")


def test_the_pin_is_of_the_first_root_and_survives_rotation(tmp_path: Path):
    repo, first = vendor_root(tmp_path, "vendor")
    from careline.shared.trust import rotate_key

    rotated = rotate_key(tmp_path / "vendor" / "keys", "root")
    repo.publish(root=rotated.root)
    assert repo.enrollment_root() == first


def test_a_bundle_brings_the_first_root_only_to_a_machine_that_pinned_it(release, tmp_path):
    from tests.updates.test_media_bundle import _bundle

    bundle, _ = _bundle(release)
    genuine = release.repo.enrollment_root()
    key = release.instruction_key.public_key()
    for pin, works in (("", False), ("ab" * 32, False), (root_pin(genuine), True)):
        state = tmp_path / f"offline-{pin[:4] or 'none'}"
        state.mkdir()
        if works:
            verified = open_bundle(bundle, machine_id="m1", coordinator_key=key,
                                   state_dir=state, root_pin=pin)
            assert verified.instruction.version == "2.0.0"
            assert (state / "tuf" / "enrollment-root.json").read_bytes() == genuine
        else:
            with pytest.raises((ConfigError, VerificationError), match="pin"):
                open_bundle(bundle, machine_id="m1", coordinator_key=key, state_dir=state,
                            root_pin=pin)
