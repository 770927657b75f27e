"""Physical-media bundle: one machine only, any altered byte refused, same TUF code path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tuf.api.metadata import Metadata, Snapshot, Timestamp

from careline.agent.installer import Installer, ProductLayout
from careline.shared.bundle import open_bundle, write_bundle
from careline.shared.errors import ConfigError, VerificationError
from careline.shared.manifest import read_manifest

from .conftest import Release, instruction_for


def _bundle(release: Release, machine_id: str = "m1") -> tuple[Path, Path]:
    package = release.publish("2.0.0")
    now = datetime.now(UTC)
    instr = msgspec.structs.replace(
        instruction_for(package, "2.0.0", machine_id=machine_id),
        expires_at=now + timedelta(days=30),
    )
    out = release.tmp / f"{machine_id}.careline-bundle"
    return write_bundle(out, release.repo, release.instruction_key, instr, package), package


def _open(release: Release, bundle: Path, machine_id: str = "m1",
          now: datetime | None = None) -> object:
    return open_bundle(bundle, machine_id=machine_id,
                       coordinator_key=release.instruction_key.public_key(),
                       state_dir=release.agent_state, now=now)


def test_offline_install_from_bundle(release: Release) -> None:
    bundle, _ = _bundle(release)
    verified = _open(release, bundle)
    layout = ProductLayout("acct", release.tmp / "Acct", data_subdir="Data")
    result = Installer(release.tmp / "state", layout, lambda: False).install(verified)  # type: ignore[arg-type]
    assert result.outcome == "installed"
    manifest = read_manifest(layout.install_dir)
    assert manifest is not None
    assert manifest.version == "2.0.0"
    # After the bundle, the online repository is still accepted (timestamp versions ordered).
    release.trust().refresh()


def test_bundle_timestamp_outlives_online_one(release: Release) -> None:
    release.publish("2.0.0")
    chain = release.repo.bundle_metadata(timedelta(days=30))
    bundle_ts = Metadata[Timestamp].from_bytes(chain["timestamp.json"]).signed
    online_ts = Metadata[Timestamp].from_bytes(
        release.repo.read_metadata("timestamp.json") or b"").signed
    assert bundle_ts.expires - datetime.now(UTC) > timedelta(days=29)
    assert online_ts.expires - datetime.now(UTC) < timedelta(days=2)
    assert online_ts.version > bundle_ts.version


def test_bundle_never_changes_the_live_snapshot_and_is_capped(release: Release) -> None:
    release.publish("2.0.0")

    def live_snapshot() -> Snapshot:
        ts = Metadata[Timestamp].from_bytes(release.repo.read_metadata("timestamp.json") or b"")
        name = f"{ts.signed.snapshot_meta.version}.snapshot.json"
        return Metadata[Snapshot].from_bytes(release.repo.read_metadata(name) or b"").signed

    before = live_snapshot()
    chain = release.repo.bundle_metadata(timedelta(days=90))
    after = live_snapshot()
    assert after.expires == before.expires
    assert after.version == before.version + 2
    bundled = next(Metadata[Snapshot].from_bytes(data).signed for name, data in chain.items()
                   if name.endswith(".snapshot.json"))
    assert bundled.version == before.version + 1
    assert bundled.expires - datetime.now(UTC) > timedelta(days=89)
    release.trust().refresh()  # the online chain is still valid
    for expiry in (timedelta(days=91), timedelta(days=3650), timedelta(0)):
        with pytest.raises(ConfigError, match="at most 90 days"):
            release.repo.bundle_metadata(expiry)


def test_bundle_for_another_machine_refused(release: Release) -> None:
    bundle, _ = _bundle(release, machine_id="m2")
    with pytest.raises(VerificationError, match="machine m2"):
        _open(release, bundle, machine_id="m1")


def test_bundle_from_another_coordinator_refused(release: Release) -> None:
    bundle, _ = _bundle(release)
    with pytest.raises(VerificationError, match="altered"):
        open_bundle(bundle, machine_id="m1",
                    coordinator_key=Ed25519PrivateKey.generate().public_key(),
                    state_dir=release.agent_state)


def test_flipped_byte_anywhere_refused(release: Release) -> None:
    bundle, _ = _bundle(release)
    data = bundle.read_bytes()
    # tar headers, metadata, package, tar padding, seal, magic
    positions = [0, 100, 600, len(data) // 3, len(data) // 2, len(data) - 600, len(data) - 72,
                 len(data) - 30, len(data) - 1]
    for pos in positions:
        altered = bytearray(data)
        altered[pos] ^= 0x01
        bundle.write_bytes(bytes(altered))
        with pytest.raises(VerificationError):
            _open(release, bundle)
    bundle.write_bytes(data[:-10])
    with pytest.raises(VerificationError):
        _open(release, bundle)
