"""Who may say which package is genuine: The Update Framework (python-tuf), split three ways.

Keys and files
--------------
Release manager's machine, ``KEYS_DIR`` (never on the coordinator)::

    root.key, targets.key        Ed25519 private keys, PEM, mode 0600 (offline keys)
    metadata/N.root.json         every root version the release manager signed

Coordinator, ``OnlineRepository(data_dir)``::

    keys/snapshot-<keyid>.key    online Ed25519 keys, mode 0600, made by the coordinator
    keys/timestamp-<keyid>.key
    metadata/N.root.json         root history (clients walk it to follow rotations)
    metadata/N.targets.json      vendor-signed targets (consistent snapshots)
    metadata/N.snapshot.json     signed here with the online snapshot key
    metadata/timestamp.json      signed here, short expiry, renewed by `renew()`

Agent, ``AgentTrust(state_dir, fetch)``: ``state_dir/tuf/`` holds the enrollment root and
the ngclient cache (root history, last trusted timestamp/snapshot/targets: the rollback
floor).

Flow
----
1. Coordinator: ``OnlineRepository.online_public_keys()`` (creates the online keys once).
2. Release manager: ``init_release_keys(KEYS_DIR, online_keys)`` -> root v1 and an empty
   targets v1; the coordinator ``publish(root=..., targets=...)``.
3. Each release: ``target_for_package(pkg)`` then ``sign_targets(KEYS_DIR, current, [t])``;
   the coordinator ``publish(targets=...)`` which re-issues snapshot and timestamp.
4. Rotation: ``rotate_key(KEYS_DIR, role, ...)`` -> new root (+ re-signed targets for the
   targets role); for an online role the coordinator first makes the key with
   ``new_online_key(role)``. The coordinator publishes; clients follow N -> N+1 roots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from careline.shared.errors import ConfigError, Conflict, ProtocolError, VerificationError
from careline.shared.files import fsync_dir, write_file_atomic
from careline.shared.instruction import Instruction
from careline.shared.package import check_product_name, package_filename, read_package_info

ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")
ROOT_EXPIRY = timedelta(days=730)
TARGETS_EXPIRY = timedelta(days=365)
BUNDLE_EXPIRY = timedelta(days=30)
# A bundle's metadata is a freeze window for the machine that reads it: bounded.
MAX_BUNDLE_EXPIRY = timedelta(days=90)
_METADATA_NAME = re.compile(r"^(?:[1-9][0-9]*\.(?:root|snapshot|targets)|timestamp)\.json$")

Fetch = Callable[[str], bytes | None]


@dataclass(frozen=True)
class ReleaseMetadata:
    """What the release manager hands to the coordinator after a key operation."""

    root: bytes
    targets: bytes | None = None


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _write_secret(path: Path, data: bytes) -> None:
    write_file_atomic(path, data, mode=0o600)


def _load_signer(path: Path) -> CryptoSigner:
    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"signing key {path} is missing") from None
    except ValueError as exc:
        raise ConfigError(f"signing key {path} is unreadable: {exc}") from None
    return CryptoSigner(private)


def _key_to_json(key: Key) -> dict[str, Any]:
    return {"keyid": key.keyid, **key.to_dict()}


def _key_from_json(data: dict[str, Any]) -> Key:
    data = dict(data)
    try:
        key = SSlibKey.from_dict(data.pop("keyid"), data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"not a public key: {exc}") from None
    if key.keytype != "ed25519":
        raise ConfigError(f"online keys must be Ed25519, got {key.keytype}")
    return key


def _parse_online_keys(online_keys: bytes) -> dict[str, Key]:
    try:
        data = json.loads(online_keys)
        return {role: _key_from_json(data[role]) for role in ONLINE_ROLES}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"online keys must name a snapshot and a timestamp key: {exc}") from None


def _load_md(data: bytes, what: str) -> Metadata[Any]:
    try:
        return Metadata.from_bytes(data)
    except Exception as exc:  # tuf raises DeserializationError wrapping anything
        raise VerificationError(f"{what} is not valid TUF metadata: {exc}") from None


def _verify(delegator: Root, role: str, md: Metadata[Any], what: str) -> None:
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except tuf_errors.UnsignedMetadataError as exc:
        raise VerificationError(f"{what} is not signed by the {role} key(s): {exc}") from None


def _check_type(md: Metadata[Any], cls: type, what: str) -> None:
    if not isinstance(md.signed, cls):
        raise VerificationError(f"{what} is {md.signed.type} metadata")


def _verify_new_root(previous: Metadata[Root] | None, new_bytes: bytes) -> Metadata[Root]:
    """TUF's rule: root N+1 must be signed by root N's threshold and by its own."""
    new = _load_md(new_bytes, "root")
    _check_type(new, Root, "root")
    expected = 1 if previous is None else previous.signed.version + 1
    if new.signed.version != expected:
        raise VerificationError(f"root version {new.signed.version}, expected {expected}")
    if previous is not None:
        _verify(previous.signed, "root", new, f"root v{expected}")
    _verify(new.signed, "root", new, f"root v{expected}")
    return new


# --- release manager's machine ----------------------------------------------------------


def _latest_root_path(metadata_dir: Path) -> Path | None:
    versions = [
        int(p.name.split(".", 1)[0]) for p in metadata_dir.glob("*.root.json")
        if p.name.split(".", 1)[0].isdigit()
    ]
    return metadata_dir / f"{max(versions)}.root.json" if versions else None


def _release_root(keys_dir: Path) -> Metadata[Root]:
    path = _latest_root_path(keys_dir / "metadata")
    if path is None:
        raise ConfigError(f"{keys_dir} holds no root metadata; run `careline release keys init`")
    md = _load_md(path.read_bytes(), str(path))
    _check_type(md, Root, str(path))
    return md


def init_release_keys(
    keys_dir: Path, online_keys: bytes, *, now: datetime | None = None
) -> ReleaseMetadata:
    """Create the offline root and targets keys and root v1 delegating snapshot and timestamp
    to the coordinator's online keys (`online_keys` = its `online_public_keys()`)."""
    keys_dir = Path(keys_dir)
    if (keys_dir / "root.key").exists():
        raise Conflict(f"{keys_dir} already holds release keys; use `rotate` to replace them")
    online = _parse_online_keys(online_keys)
    now = _now(now)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (keys_dir / "metadata").mkdir(exist_ok=True)
    signers = {role: CryptoSigner.generate_ed25519() for role in OFFLINE_ROLES}
    root = Root(expires=now + ROOT_EXPIRY, consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    for role, key in online.items():
        root.add_key(key, role)
    root_md = Metadata(root)
    root_md.sign(signers["root"])
    targets_md = Metadata(Targets(expires=now + TARGETS_EXPIRY))
    targets_md.sign(signers["targets"])
    for role, signer in signers.items():
        _write_secret(keys_dir / f"{role}.key", signer.private_bytes)
    root_bytes = root_md.to_bytes()
    write_file_atomic(keys_dir / "metadata" / "1.root.json", root_bytes)
    return ReleaseMetadata(root=root_bytes, targets=targets_md.to_bytes())


def _resign_targets(
    signer: CryptoSigner, current: Metadata[Targets], now: datetime,
    add: Sequence[TargetFile] = (), remove: Sequence[str] = (),
) -> bytes:
    targets = current.signed
    targets.version += 1
    targets.expires = now + TARGETS_EXPIRY
    for path in remove:
        targets.targets.pop(path, None)
    for target in add:
        targets.targets[target.path] = target
    current.sign(signer)
    return current.to_bytes()


def _current_targets(root: Root, current_targets: bytes) -> Metadata[Targets]:
    md = _load_md(current_targets, "current targets")
    _check_type(md, Targets, "current targets")
    _verify(root, "targets", md, "current targets")
    return md


def sign_targets(
    keys_dir: Path, current_targets: bytes, add: Sequence[TargetFile] = (),
    remove: Sequence[str] = (), *, now: datetime | None = None,
) -> bytes:
    """New targets metadata (version + 1) with `add` published and `remove` withdrawn.

    `current_targets` is checked against the release manager's own root first, so a tampered
    copy from the coordinator cannot be re-signed. Calling it with nothing to add renews the
    expiry.
    """
    keys_dir = Path(keys_dir)
    root = _release_root(keys_dir)
    md = _current_targets(root.signed, current_targets)
    signer = _load_signer(keys_dir / "targets.key")
    if signer.public_key.keyid not in root.signed.roles["targets"].keyids:
        raise ConfigError(
            f"{keys_dir}/targets.key is not the targets key root v{root.signed.version} trusts"
        )
    return _resign_targets(signer, md, _now(now), add, remove)


def renew_root(keys_dir: Path, *, now: datetime | None = None) -> bytes:
    """Root N+1 with the same keys and a fresh expiry (root expires after ROOT_EXPIRY)."""
    return _next_root(Path(keys_dir), _now(now), lambda _root: [])


def _next_root(
    keys_dir: Path, now: datetime, change: Callable[[Root], list[CryptoSigner]]
) -> bytes:
    """Sign root N+1 after `change`; `change` returns extra signers (a new root key)."""
    md = _release_root(keys_dir)
    old_root_signer = _load_signer(keys_dir / "root.key")
    md.signed.version += 1
    md.signed.expires = now + ROOT_EXPIRY
    extra = change(md.signed)
    md.sign(old_root_signer)
    for signer in extra:
        md.sign(signer, append=True)
    data = md.to_bytes()
    write_file_atomic(keys_dir / "metadata" / f"{md.signed.version}.root.json", data)
    return data


def _replace_key(root: Root, role: str, key: Key) -> None:
    for keyid in list(root.roles[role].keyids):
        root.revoke_key(keyid, role)
    root.add_key(key, role)


def rotate_key(
    keys_dir: Path, role: str, *, online_key: bytes | None = None,
    current_targets: bytes | None = None, now: datetime | None = None,
) -> ReleaseMetadata:
    """Replace the key of `role` and sign root N+1.

    root: a new root key; root N+1 carries both old and new signatures, the old key is deleted.
    targets: a new targets key; `current_targets` is re-signed with it (returned as targets).
    snapshot/timestamp: `online_key` is the public key JSON from the coordinator's
    `new_online_key(role)`.
    """
    keys_dir = Path(keys_dir)
    now = _now(now)
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}")
    if role in ONLINE_ROLES:
        if online_key is None:
            raise ConfigError(f"rotating {role} needs the coordinator's new public key")
        try:
            key = _key_from_json(json.loads(online_key))
        except ValueError as exc:
            raise ConfigError(f"online key is not JSON: {exc}") from None

        def use_online_key(root: Root) -> list[CryptoSigner]:
            _replace_key(root, role, key)
            return []

        return ReleaseMetadata(root=_next_root(keys_dir, now, use_online_key))
    targets_md = None
    if role == "targets":
        if current_targets is None:
            raise ConfigError("rotating the targets key needs the current targets metadata")
        targets_md = _current_targets(_release_root(keys_dir).signed, current_targets)
    new_signer = CryptoSigner.generate_ed25519()
    new_key_path = keys_dir / f"{role}.key.new"
    _write_secret(new_key_path, new_signer.private_bytes)

    def use_new_key(root: Root) -> list[CryptoSigner]:
        _replace_key(root, role, new_signer.public_key)
        # A new root must also be signed by its own new key.
        return [new_signer] if role == "root" else []

    root = _next_root(keys_dir, now, use_new_key)
    os.replace(new_key_path, keys_dir / f"{role}.key")
    fsync_dir(keys_dir)
    targets = None if targets_md is None else _resign_targets(new_signer, targets_md, now)
    return ReleaseMetadata(root=root, targets=targets)


def target_path(product: str, version: str) -> str:
    return f"{check_product_name(product)}/{package_filename(product, version)}"


def target_for_package(package: Path) -> TargetFile:
    """The TUF target entry for a package: path, length, sha256 and the release metadata."""
    info = read_package_info(package)
    target = TargetFile.from_file(target_path(info.product, info.version), str(package))
    target.unrecognized_fields["custom"] = {"careline": msgspec.to_builtins(info)}
    return target


# --- coordinator ------------------------------------------------------------------------


class OnlineRepository:
    """The coordinator's half of the repository: holds the online keys, stores the metadata
    the release manager signed, and issues snapshot and timestamp.

    Not safe for concurrent writers: the coordinator should call the mutating methods from
    one task (or under one lock).
    """

    def __init__(
        self, data_dir: Path, *, timestamp_expiry: timedelta = timedelta(days=1),
        snapshot_expiry: timedelta = timedelta(days=7),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.keys_dir = self.data_dir / "keys"
        self.metadata_dir = self.data_dir / "metadata"
        self.timestamp_expiry = timestamp_expiry
        self.snapshot_expiry = snapshot_expiry

    # keys

    def _new_key(self, role: str) -> Key:
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        signer = CryptoSigner.generate_ed25519()
        _write_secret(self.keys_dir / f"{role}-{signer.public_key.keyid}.key",
                      signer.private_bytes)
        return signer.public_key

    def _held_keys(self, role: str) -> dict[str, Path]:
        return {
            p.name.removeprefix(f"{role}-").removesuffix(".key"): p
            for p in self.keys_dir.glob(f"{role}-*.key")
        }

    def online_public_keys(self) -> bytes:
        """Public snapshot and timestamp keys for `init_release_keys`; created on first call."""
        keys = {}
        for role in ONLINE_ROLES:
            held = sorted(self._held_keys(role).values())
            key = _load_signer(held[0]).public_key if held else self._new_key(role)
            keys[role] = _key_to_json(key)
        return json.dumps(keys, indent=1, sort_keys=True).encode()

    def new_online_key(self, role: str) -> bytes:
        """A fresh key for `rotate_key(..., role, online_key=...)`; used once root lists it."""
        if role not in ONLINE_ROLES:
            raise ConfigError(f"the coordinator holds only {' and '.join(ONLINE_ROLES)} keys")
        return json.dumps(_key_to_json(self._new_key(role)), sort_keys=True).encode()

    def _signers(self, root: Root, role: str) -> list[CryptoSigner]:
        held = self._held_keys(role)
        signers = [_load_signer(held[k]) for k in root.roles[role].keyids if k in held]
        if len(signers) < root.roles[role].threshold:
            raise ConfigError(
                f"the coordinator holds no {role} key listed in root v{root.version}"
            )
        return signers

    # metadata

    def checkpoint(self) -> bytes | None:
        """What clients see now: timestamp.json, which every publish writes last."""
        return self._read("timestamp.json")

    def restore(self, checkpoint: bytes | None) -> None:
        """Undo the publishes since `checkpoint` (for a publish whose database write failed):
        clients start from timestamp.json, so the newer snapshot and targets it no longer
        names are unreachable, and are overwritten by the next publish of those versions."""
        if checkpoint is None:
            (self.metadata_dir / "timestamp.json").unlink(missing_ok=True)
        else:
            write_file_atomic(self.metadata_dir / "timestamp.json", checkpoint)

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.metadata_dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def _root(self) -> Metadata[Root] | None:
        path = _latest_root_path(self.metadata_dir)
        return None if path is None else Metadata[Root].from_bytes(path.read_bytes())

    def _timestamp(self) -> Metadata[Timestamp] | None:
        data = self._read("timestamp.json")
        return None if data is None else Metadata[Timestamp].from_bytes(data)

    def _current_snapshot(self) -> Metadata[Snapshot]:
        return Metadata[Snapshot].from_bytes(self._current_snapshot_bytes())

    def read_metadata(self, name: str) -> bytes | None:
        """Serve one metadata file to an agent (the agent fetcher's remote end); None = 404."""
        if not _METADATA_NAME.match(name):
            return None
        return self._read(name)

    def enrollment_root(self) -> bytes:
        """The root an agent stores at enrollment (`install_trusted_root`): the vendor's
        first, which join strings pin by hash; the agent walks to the newest from it."""
        data = self._read("1.root.json")
        if data is None:
            raise ConfigError("no release root published yet; run `careline release keys init`")
        return data

    def current_targets(self) -> bytes:
        """The targets metadata the release manager signs the next release over."""
        ts = self._timestamp()
        if ts is None:
            raise ConfigError("no targets published yet")
        version = self._current_snapshot().signed.meta["targets.json"].version
        data = self._read(f"{version}.targets.json")
        if data is None:
            raise ConfigError(f"targets v{version} is missing from {self.metadata_dir}")
        return data

    def publish(
        self, *, root: bytes | None = None, targets: bytes | None = None,
        now: datetime | None = None,
    ) -> None:
        """Accept metadata the release manager signed, then issue snapshot and timestamp.

        Everything is verified first (root chain, targets signature and version), so bad
        input changes nothing.
        """
        now = _now(now)
        current_root = self._root()
        new_root = _verify_new_root(current_root, root) if root is not None else current_root
        if new_root is None:
            raise ConfigError("publish the initial root first")
        signers = {role: self._signers(new_root.signed, role) for role in ONLINE_ROLES}
        ts = self._timestamp()
        snapshot = self._current_snapshot() if ts else None
        targets_md: Metadata[Targets] | None = None
        if targets is not None:
            targets_md = _load_md(targets, "targets")
            _check_type(targets_md, Targets, "targets")
            _verify(new_root.signed, "targets", targets_md, "targets")
            if snapshot is not None:
                current = snapshot.signed.meta["targets.json"].version
                if targets_md.signed.version <= current:
                    raise VerificationError(
                        f"targets v{targets_md.signed.version} is not newer than v{current}"
                    )
        elif snapshot is None:
            raise ConfigError("the first publish needs targets metadata")
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        if targets_md is not None:
            assert targets is not None
            write_file_atomic(
                self.metadata_dir / f"{targets_md.signed.version}.targets.json", targets
            )
            meta = MetaFile.from_data(targets_md.signed.version, targets, ["sha256"])
        else:
            assert snapshot is not None
            meta = snapshot.signed.meta["targets.json"]
        snapshot_bytes = self._write_snapshot(signers["snapshot"], meta, now + self.snapshot_expiry)
        if root is not None:
            write_file_atomic(self.metadata_dir / f"{new_root.signed.version}.root.json", root)
        self._write_timestamp(signers["timestamp"], snapshot_bytes, now + self.timestamp_expiry)
        if root is not None and current_root is not None:
            self._retire_keys(current_root.signed, new_root.signed)

    def _retire_keys(self, old: Root, new: Root) -> None:
        """Delete online private keys the old root listed and the new root dropped."""
        for role in ONLINE_ROLES:
            held = self._held_keys(role)
            for keyid in set(old.roles[role].keyids) - set(new.roles[role].keyids):
                if keyid in held:
                    held[keyid].unlink()

    def _write_snapshot(
        self, signers: list[CryptoSigner], targets_meta: MetaFile, expires: datetime
    ) -> bytes:
        ts = self._timestamp()
        version = ts.signed.snapshot_meta.version + 1 if ts else 1
        data = _sign_snapshot(signers, targets_meta, expires, version)
        write_file_atomic(self.metadata_dir / f"{version}.snapshot.json", data)
        return data

    def _sign_timestamp(
        self, signers: list[CryptoSigner], snapshot_bytes: bytes, expires: datetime,
        version: int,
    ) -> bytes:
        snapshot = Metadata[Snapshot].from_bytes(snapshot_bytes)
        meta = MetaFile.from_data(snapshot.signed.version, snapshot_bytes, ["sha256"])
        md = Metadata(Timestamp(version=version, expires=expires, snapshot_meta=meta))
        for i, signer in enumerate(signers):
            md.sign(signer, append=i > 0)
        return md.to_bytes()

    def _write_timestamp(
        self, signers: list[CryptoSigner], snapshot_bytes: bytes, expires: datetime
    ) -> bytes:
        ts = self._timestamp()
        version = ts.signed.version + 1 if ts else 1
        data = self._sign_timestamp(signers, snapshot_bytes, expires, version)
        write_file_atomic(self.metadata_dir / "timestamp.json", data)
        return data

    def renew(self, now: datetime | None = None) -> bool:
        """Re-sign timestamp (and snapshot) when within half their lifetime of expiry.

        The coordinator calls this periodically (e.g. hourly); True if anything was re-signed.
        """
        now = _now(now)
        root, ts = self._root(), self._timestamp()
        if root is None or ts is None:
            return False
        snapshot = self._current_snapshot()
        renew_snapshot = snapshot.signed.expires - now < self.snapshot_expiry / 2
        if not renew_snapshot and ts.signed.expires - now >= self.timestamp_expiry / 2:
            return False
        self._reissue(root.signed, now + self.snapshot_expiry if renew_snapshot else None, now)
        return True

    def _reissue(self, root: Root, snapshot_expires: datetime | None, now: datetime) -> None:
        """Optionally a new snapshot, then a new online timestamp."""
        snapshot_bytes = self._current_snapshot_bytes()
        if snapshot_expires is not None:
            snapshot_bytes = self._renew_snapshot(root, snapshot_bytes, snapshot_expires)
        self._write_timestamp(
            self._signers(root, "timestamp"), snapshot_bytes, now + self.timestamp_expiry
        )

    def _current_snapshot_bytes(self) -> bytes:
        ts = self._timestamp()
        assert ts is not None
        data = self._read(f"{ts.signed.snapshot_meta.version}.snapshot.json")
        if data is None:
            raise ConfigError(f"snapshot v{ts.signed.snapshot_meta.version} is missing")
        return data

    def _renew_snapshot(self, root: Root, snapshot_bytes: bytes, expires: datetime) -> bytes:
        meta = Metadata[Snapshot].from_bytes(snapshot_bytes).signed.meta["targets.json"]
        return self._write_snapshot(self._signers(root, "snapshot"), meta, expires)

    def bundle_metadata(
        self, expiry: timedelta = BUNDLE_EXPIRY, now: datetime | None = None
    ) -> dict[str, bytes]:
        """A complete metadata chain valid for `expiry` (for physical media, at most
        MAX_BUNDLE_EXPIRY).

        The bundle gets snapshot S+1 and timestamp T+1, which exist only in the bundle; the
        online repository moves to S+2 (same expiry as before) and T+2, so a machine that
        read the bundle still accepts it afterwards, and the long-lived bundle metadata
        never becomes what every agent is served.
        """
        if not timedelta(0) < expiry <= MAX_BUNDLE_EXPIRY:
            raise ConfigError(
                f"a bundle is valid for at most {MAX_BUNDLE_EXPIRY.days} days, not {expiry}")
        now = _now(now)
        root = self._root()
        ts = self._timestamp()
        if root is None or ts is None:
            raise ConfigError("nothing published yet")
        live = self._current_snapshot()
        targets_meta = live.signed.meta["targets.json"]
        snapshot_signers = self._signers(root.signed, "snapshot")
        timestamp_signers = self._signers(root.signed, "timestamp")
        bundle_version = ts.signed.snapshot_meta.version + 1
        snapshot_bytes = _sign_snapshot(snapshot_signers, targets_meta, now + expiry,
                                        bundle_version)
        bundle_ts = self._sign_timestamp(
            timestamp_signers, snapshot_bytes, now + expiry, ts.signed.version + 1
        )
        live_bytes = _sign_snapshot(snapshot_signers, targets_meta, live.signed.expires,
                                    bundle_version + 1)
        write_file_atomic(self.metadata_dir / f"{bundle_version + 1}.snapshot.json", live_bytes)
        write_file_atomic(
            self.metadata_dir / "timestamp.json",
            self._sign_timestamp(timestamp_signers, live_bytes,
                                 now + self.timestamp_expiry, ts.signed.version + 2),
        )
        chain = {
            p.name: p.read_bytes() for p in self.metadata_dir.glob("*.root.json")
            if _METADATA_NAME.match(p.name)
        }
        chain["timestamp.json"] = bundle_ts
        chain[f"{bundle_version}.snapshot.json"] = snapshot_bytes
        targets_bytes = self._read(f"{targets_meta.version}.targets.json")
        assert targets_bytes is not None
        chain[f"{targets_meta.version}.targets.json"] = targets_bytes
        return chain


def _sign_snapshot(
    signers: list[CryptoSigner], targets_meta: MetaFile, expires: datetime, version: int
) -> bytes:
    md = Metadata(Snapshot(version=version, expires=expires, meta={"targets.json": targets_meta}))
    for i, signer in enumerate(signers):
        md.sign(signer, append=i > 0)
    return md.to_bytes()


# --- agent ------------------------------------------------------------------------------

_BASE_URL = "careline:/metadata/"
_TRUSTED_ROOT = "enrollment-root.json"


class _CallbackFetcher(FetcherInterface):
    """ngclient's network layer, replaced by a callable (a websocket round trip, or a bundle)."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch_name = fetch

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(_BASE_URL)
        data = self._fetch_name(name)
        if data is None:
            raise tuf_errors.DownloadHTTPError(f"{name} not found", 404)
        return iter([data])


def _tuf_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "tuf"


def has_trusted_root(state_dir: Path) -> bool:
    return (_tuf_dir(state_dir) / _TRUSTED_ROOT).exists()


def install_trusted_root(state_dir: Path, root_bytes: bytes) -> None:
    """Store the root received at enrollment as this agent's trust anchor.

    Re-enrolling replaces the anchor and drops the metadata cache learned under the old one.
    """
    md = _load_md(root_bytes, "enrollment root")
    _check_type(md, Root, "enrollment root")
    _verify(md.signed, "root", md, "enrollment root")
    tuf_dir = _tuf_dir(state_dir)
    if tuf_dir.exists():
        for path in sorted(tuf_dir.rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
    tuf_dir.mkdir(parents=True, exist_ok=True)
    write_file_atomic(tuf_dir / _TRUSTED_ROOT, root_bytes)


@dataclass(frozen=True)
class VerifiedPackage:
    """A package file that both the vendor's targets metadata and the coordinator's
    instruction vouch for. Only AgentTrust.verify_package makes these; the installer takes
    nothing else."""

    path: Path
    instruction: Instruction


class AgentTrust:
    """The agent's TUF client: ngclient's Updater over a caller-supplied `fetch(name)`.

    `fetch` returns the bytes of a metadata file such as "timestamp.json" or
    "3.root.json", or None if the repository has no such file.
    """

    def __init__(self, state_dir: Path, fetch: Fetch) -> None:
        self._dir = _tuf_dir(state_dir)
        self._fetch = fetch
        self._updater: Updater | None = None

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """TUF's failures as VerificationError; transport failures pass through unchanged."""
        try:
            yield
        except tuf_errors.DownloadLengthMismatchError as exc:
            raise VerificationError(f"metadata longer than allowed: {exc}") from None
        except tuf_errors.DownloadHTTPError as exc:
            raise VerificationError(f"repository lacks metadata: {exc}") from None
        except tuf_errors.DownloadError as exc:
            if exc.__cause__ is not None:
                raise exc.__cause__ from None
            raise
        except tuf_errors.RepositoryError as exc:
            raise VerificationError(
                f"update metadata refused ({type(exc).__name__}): {exc}"
            ) from None

    def refresh(self) -> None:
        """Load root (following rotations), timestamp, snapshot and targets, with every TUF
        check: signatures, thresholds, versions (rollback, mix-and-match), expiry (freeze)."""
        try:
            anchor = (self._dir / _TRUSTED_ROOT).read_bytes()
        except FileNotFoundError:
            raise ConfigError("this agent has no trusted update root: pin the vendor's with "
                              "`careline-agent pin-root HASH`, or enroll it again") from None
        with self._translate():
            # An Updater refreshes once; a new one per refresh starts from the cached chain.
            updater = Updater(
                metadata_dir=str(self._dir), metadata_base_url=_BASE_URL,
                fetcher=_CallbackFetcher(self._fetch), config=UpdaterConfig(),
                bootstrap=anchor,
            )
            updater.refresh()
        self._updater = updater

    def target_for(self, instruction: Instruction) -> TargetFile:
        """The vendor-signed target the instruction names, if both agree on everything."""
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        with self._translate():
            target = self._updater.get_targetinfo(instruction.target)
        if target is None:
            raise VerificationError(
                f"{instruction.target} is not in the vendor-signed targets metadata"
            )
        if target.length != instruction.length:
            raise VerificationError(
                f"{instruction.target}: vendor says {target.length} bytes, "
                f"instruction says {instruction.length}"
            )
        if target.hashes.get("sha256") != instruction.sha256:
            raise VerificationError(
                f"{instruction.target}: vendor sha256 differs from the instruction's"
            )
        custom = (target.custom or {}).get("careline", {})
        if (custom.get("product"), custom.get("version")) != (
            instruction.product, instruction.version
        ):
            raise VerificationError(
                f"{instruction.target} is {custom.get('product')} {custom.get('version')}, "
                f"instruction says {instruction.product} {instruction.version}"
            )
        return target

    def verify_package(self, instruction: Instruction, path: Path) -> VerifiedPackage:
        """Check a downloaded package file against the signed target and the instruction."""
        target = self.target_for(instruction)
        try:
            with open(path, "rb") as f:
                target.verify_length_and_hashes(f)
        except tuf_errors.LengthOrHashMismatchError as exc:
            raise VerificationError(f"{Path(path).name}: {exc}") from None
        return VerifiedPackage(Path(path), instruction)


class PartialDownload:
    """A package arriving as (offset, bytes) chunks, kept in the state dir so a reconnect
    resumes from `offset` instead of starting over. Bounded by the signed length (no
    endless-data attack) and hash-checked at the end."""

    def __init__(self, state_dir: Path, instruction: Instruction) -> None:
        self.instruction = instruction
        self._dir = Path(state_dir) / "downloads"
        self._dir.mkdir(parents=True, exist_ok=True)
        stem = hashlib.sha256(instruction.job_id.encode()).hexdigest()[:32]
        self.part_path = self._dir / f"{stem}.part"
        self.path = self._dir / f"{stem}.careline"
        if self.part_path.exists() and self.part_path.stat().st_size > instruction.length:
            self.part_path.unlink()

    @property
    def offset(self) -> int:
        """Where the sender should resume."""
        try:
            return self.part_path.stat().st_size
        except FileNotFoundError:
            return 0

    @property
    def complete(self) -> bool:
        return self.offset == self.instruction.length

    def write(self, offset: int, data: bytes) -> None:
        current = self.offset
        if offset != current:
            raise ProtocolError(f"chunk at offset {offset}, expected {current}")
        if current + len(data) > self.instruction.length:
            self.discard()
            raise VerificationError(
                f"download exceeds the signed length of {self.instruction.length} bytes"
            )
        with open(self.part_path, "ab") as f:
            f.write(data)

    def finish(self) -> Path:
        """The complete file, moved out of `.part` once its length and sha256 match."""
        if not self.complete:
            raise ProtocolError(f"download incomplete: {self.offset}/{self.instruction.length}")
        digest = hashlib.sha256()
        with open(self.part_path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
            os.fsync(f.fileno())
        if digest.hexdigest() != self.instruction.sha256:
            self.discard()
            raise VerificationError("downloaded package does not match the signed sha256")
        os.replace(self.part_path, self.path)
        fsync_dir(self._dir)
        return self.path

    def discard(self) -> None:
        for path in (self.part_path, self.path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
