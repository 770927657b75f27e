"""TUF: publishing, key rotation, and each attack the agent must refuse."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from tuf.api.metadata import Metadata

from careline.shared.errors import ConfigError, VerificationError
from careline.shared.trust import (
    AgentTrust,
    OnlineRepository,
    init_release_keys,
    install_trusted_root,
    rotate_key,
    sign_targets,
    target_for_package,
)

from .conftest import Release, instruction_for, make_package


def test_published_target_verifies(release: Release) -> None:
    package = release.publish("1.0.0")
    instr = instruction_for(package, "1.0.0")
    verified = release.trust().verify_package(instr, package)
    assert verified.path == package
    target = release.trust().target_for(instr)
    assert target.custom["careline"]["kind"] == "bugfix"


def test_key_files_are_private_and_apart(release: Release) -> None:
    for name in ("root.key", "targets.key"):
        assert stat.S_IMODE((release.keys / name).stat().st_mode) == 0o600
    coordinator_files = {p.name for p in (release.tmp / "coordinator").rglob("*")}
    assert not coordinator_files & {"root.key", "targets.key"}
    for path in (release.tmp / "coordinator").rglob("*.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.name.startswith(("snapshot-", "timestamp-"))


def test_client_holding_old_root_follows_rotations(release: Release) -> None:
    release.publish("1.0.0")
    release.trust().refresh()  # the agent now trusts root v1 and its targets key
    old_targets_key = (release.keys / "targets.key").read_bytes()

    rotated = rotate_key(release.keys, "root")
    release.repo.publish(root=rotated.root)
    rotated = rotate_key(release.keys, "targets", current_targets=release.repo.current_targets())
    release.repo.publish(root=rotated.root, targets=rotated.targets)
    online_key = release.repo.new_online_key("timestamp")
    release.repo.publish(root=rotate_key(release.keys, "timestamp", online_key=online_key).root)
    assert (release.keys / "targets.key").read_bytes() != old_targets_key
    assert len(list((release.tmp / "coordinator").rglob("timestamp-*.key"))) == 1

    package = release.publish("1.1.0")
    trust = release.trust()
    trust.verify_package(instruction_for(package, "1.1.0"), package)
    history = {p.name for p in (release.agent_state / "tuf" / "root_history").iterdir()}
    assert history == {"1.root.json", "2.root.json", "3.root.json", "4.root.json"}


def test_targets_signed_with_the_old_key_after_rotation_are_refused(release: Release) -> None:
    old_key = release.keys / "targets.key"
    old_key_copy = release.tmp / "old-targets.key"
    old_key_copy.write_bytes(old_key.read_bytes())
    rotated = rotate_key(release.keys, "targets", current_targets=release.repo.current_targets())
    release.repo.publish(root=rotated.root, targets=rotated.targets)
    # Someone still holding the retired targets key signs a release: refused.
    old_key.write_bytes(old_key_copy.read_bytes())
    with pytest.raises(ConfigError, match="not the targets key"):
        sign_targets(release.keys, release.repo.current_targets())
    package = make_package(release.tmp, "6.6.6")
    from careline.shared import trust
    forged = trust._resign_targets(  # bypass sign_targets' own check, as an attacker would
        trust._load_signer(old_key), Metadata.from_bytes(release.repo.current_targets()),
        datetime.now(UTC), [target_for_package(package)])
    with pytest.raises(VerificationError, match="not signed"):
        release.repo.publish(targets=forged)


def test_targets_from_another_release_key_refused(release: Release, tmp_path: Path) -> None:
    other_repo = OnlineRepository(tmp_path / "other")
    other = init_release_keys(tmp_path / "other-keys", other_repo.online_public_keys())
    package = make_package(tmp_path, "9.0.0")
    forged = sign_targets(tmp_path / "other-keys", other.targets or b"",
                          [target_for_package(package)])
    with pytest.raises(VerificationError, match="not signed"):
        release.repo.publish(targets=forged)
    # Even if the coordinator's disk is written to directly, the agent refuses it.
    current = json.loads(release.repo.current_targets())["signed"]["version"]
    (release.repo.metadata_dir / f"{current}.targets.json").write_bytes(forged)
    with pytest.raises(VerificationError):
        release.trust().refresh()


def test_expired_timestamp_refused(release: Release) -> None:
    """A frozen repository: the last timestamp is replayed past its expiry."""
    past = datetime.now(UTC) - timedelta(days=2)
    release.publish("1.0.0", now=past)
    with pytest.raises(VerificationError, match="expired"):
        release.trust().refresh()
    # Renewal by the coordinator heals it.
    assert release.repo.renew()
    release.trust().refresh()


def test_renew_is_a_no_op_while_fresh(release: Release) -> None:
    assert not release.repo.renew()


def test_mixed_metadata_refused(release: Release) -> None:
    release.publish("1.0.0")
    release.publish("1.1.0")
    meta = release.repo.metadata_dir
    targets = sorted(meta.glob("*.targets.json"))
    # Serve targets v2 under the name of the current version (v3): snapshot says otherwise.
    targets[-1].write_bytes(targets[-2].read_bytes())
    with pytest.raises(VerificationError):
        release.trust().refresh()


def test_snapshot_not_matching_timestamp_refused(release: Release) -> None:
    release.publish("1.0.0")
    release.publish("1.1.0")
    snapshots = sorted(release.repo.metadata_dir.glob("*.snapshot.json"),
                       key=lambda p: int(p.name.split(".")[0]))
    snapshots[-1].write_bytes(snapshots[-2].read_bytes())
    with pytest.raises(VerificationError):
        release.trust().refresh()


def test_metadata_rollback_refused(release: Release) -> None:
    release.publish("1.0.0")
    old_timestamp = (release.repo.metadata_dir / "timestamp.json").read_bytes()
    release.publish("1.1.0")
    release.trust().refresh()
    (release.repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(VerificationError, match="BadVersionNumber"):
        release.trust().refresh()


def test_wrongly_signed_metadata_refused(release: Release) -> None:
    release.publish("1.0.0")
    path = release.repo.metadata_dir / "timestamp.json"
    doc = json.loads(path.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # extend the freshness without the key
    path.write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="UnsignedMetadata"):
        release.trust().refresh()


def test_endless_metadata_refused(release: Release) -> None:
    def fetch(name: str) -> bytes | None:
        return b"x" * 10_000_000 if name == "timestamp.json" else release.repo.read_metadata(name)

    with pytest.raises(VerificationError, match="longer"):
        release.trust(fetch).refresh()


def test_unsigned_or_altered_package_refused(release: Release) -> None:
    package = release.publish("1.0.0")
    unsigned = make_package(release.tmp, "1.2.0")  # built but never signed
    with pytest.raises(VerificationError, match="not in the vendor-signed"):
        release.trust().verify_package(instruction_for(unsigned, "1.2.0"), unsigned)
    instr = instruction_for(package, "1.0.0")
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 1
    package.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="hash"):
        release.trust().verify_package(instr, package)


def test_instruction_must_agree_with_signed_target(release: Release) -> None:
    package = release.publish("1.0.0")
    instr = instruction_for(package, "1.0.0")
    trust = release.trust()
    for change in ({"sha256": "0" * 64}, {"length": instr.length + 1}, {"version": "1.0.1"}):
        with pytest.raises(VerificationError):
            trust.target_for(msgspec.structs.replace(instr, **change))


def test_missing_enrollment_root(tmp_path: Path, release: Release) -> None:
    with pytest.raises(ConfigError, match="enroll"):
        AgentTrust(tmp_path / "never-enrolled", release.repo.read_metadata).refresh()


def test_install_trusted_root_rejects_unsigned(release: Release, tmp_path: Path) -> None:
    doc = json.loads(release.repo.enrollment_root())
    doc["signatures"] = []
    with pytest.raises(VerificationError):
        install_trusted_root(tmp_path / "agent", json.dumps(doc).encode())


def test_online_rotation_needs_coordinator_key(release: Release) -> None:
    with pytest.raises(ConfigError):
        rotate_key(release.keys, "snapshot")
    with pytest.raises(ConfigError):
        rotate_key(release.keys, "targets")
