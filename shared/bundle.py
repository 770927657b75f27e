"""Physical-media bundle: everything an offline machine needs to install one job, in one file.

Layout: an uncompressed tar, then a 64-byte Ed25519 seal, then an 8-byte magic::

    metadata/<name>            the TUF chain: every N.root.json, timestamp.json (expiry long
                               enough for the post), N.snapshot.json, N.targets.json
    instruction                the signed instruction (it names the one machine)
    package/<file name>        the package (already gzip-compressed)
    <seal><MAGIC>              coordinator signature over sha256(tar bytes)

The seal makes any flipped byte fail at once, padding and headers included. The contents are
then checked exactly as online: the instruction with `verify_instruction`, the metadata and
package through `AgentTrust` with a fetcher that serves from the bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from careline.shared.errors import VerificationError
from careline.shared.files import fsync_dir
from careline.shared.instruction import Instruction, sign_instruction, verify_instruction
from careline.shared.trust import (
    BUNDLE_EXPIRY,
    AgentTrust,
    OnlineRepository,
    VerifiedPackage,
    has_trusted_root,
    install_trusted_root,
)

BUNDLE_SUFFIX = ".careline-bundle"
MAGIC = b"CLBNDL01"
_SEAL_DOMAIN = b"careline-bundle-v1\x00"
_SEAL_LEN = 64
_MAX_SMALL = 4 << 20
_CHUNK = 1 << 20
_PACKAGE_NAME = re.compile(r"^package/[A-Za-z0-9][A-Za-z0-9._-]*\.careline$")
_METADATA_NAME = re.compile(
    r"^metadata/(?:[1-9][0-9]*\.(?:root|snapshot|targets)|timestamp)\.json$"
)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_bundle(
    out: Path,
    repo: OnlineRepository,
    instruction_key: Ed25519PrivateKey,
    instruction: Instruction,
    package: Path,
    *,
    expiry: timedelta = BUNDLE_EXPIRY,
    now: datetime | None = None,
) -> Path:
    """Write the bundle for `instruction` (one machine) to `out` and return its path.

    The instruction's expiry should cover the post as well (e.g. `expiry`).
    """
    out = Path(out)
    chain = repo.bundle_metadata(expiry, now)
    signed_instruction = sign_instruction(instruction_key, instruction)
    name = instruction.target.rsplit("/", 1)[-1]
    if not _PACKAGE_NAME.match(f"package/{name}"):
        raise VerificationError(f"target name {name!r} cannot be bundled")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "w+b") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for meta_name, data in sorted(chain.items()):
                    tar.addfile(_tarinfo(f"metadata/{meta_name}", len(data)),
                                io.BytesIO(data))
                tar.addfile(_tarinfo("instruction", len(signed_instruction)),
                            io.BytesIO(signed_instruction))
                with open(package, "rb") as pkg:
                    tar.addfile(_tarinfo(f"package/{name}", os.fstat(pkg.fileno()).st_size),
                                pkg)
            body_len = f.tell()
            f.seek(0)
            digest = _digest(f, body_len)
            f.seek(body_len)
            f.write(instruction_key.sign(_SEAL_DOMAIN + digest) + MAGIC)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return out


def _digest(f: IO[bytes], length: int) -> bytes:
    digest = hashlib.sha256()
    remaining = length
    while remaining:
        chunk = f.read(min(_CHUNK, remaining))
        if not chunk:
            raise VerificationError("bundle is truncated")
        digest.update(chunk)
        remaining -= len(chunk)
    return digest.digest()


def open_bundle(
    path: Path,
    *,
    machine_id: str,
    coordinator_key: Ed25519PublicKey,
    state_dir: Path,
    now: datetime | None = None,
    root_pin: str = "",
) -> VerifiedPackage:
    """Verify a bundle for this machine and return its package, copied into the state dir.

    Also advances the agent's trusted TUF metadata (root rotations included), as an online
    refresh would. An agent with no trusted root yet takes the bundle's root v1 only if it
    matches `root_pin` (the agent's local pin). Raises VerificationError for another
    machine's bundle or any alteration.
    """
    path = Path(path)
    now = now or datetime.now(UTC)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _SEAL_LEN + len(MAGIC):
            raise VerificationError(f"{path.name} is not a Careline bundle")
        body_len = size - _SEAL_LEN - len(MAGIC)
        f.seek(body_len)
        seal, magic = f.read(_SEAL_LEN), f.read(len(MAGIC))
        if magic != MAGIC:
            raise VerificationError(f"{path.name} is not a Careline bundle")
        f.seek(0)
        try:
            coordinator_key.verify(seal, _SEAL_DOMAIN + _digest(f, body_len))
        except InvalidSignature:
            raise VerificationError(
                f"{path.name} is altered or was not made by this agent's coordinator"
            ) from None
        f.seek(0)
        chain, signed_instruction, package_name = _read_members(f, state_dir)
    instruction = verify_instruction(coordinator_key, signed_instruction, machine_id, now)
    if root_pin and not has_trusted_root(state_dir):
        first = chain.get("1.root.json", b"")
        if hashlib.sha256(first).hexdigest() != root_pin:
            raise VerificationError("the bundle's update root does not match this machine's pin")
        install_trusted_root(state_dir, first)
    package_path = Path(state_dir) / "downloads" / package_name
    if package_name != instruction.target.rsplit("/", 1)[-1]:
        raise VerificationError("bundle package is not the one its instruction names")
    return AgentTrust(state_dir, chain.get).verify_package(instruction, package_path)


def _read_members(
    f: IO[bytes], state_dir: Path
) -> tuple[dict[str, bytes], bytes, str]:
    chain: dict[str, bytes] = {}
    signed_instruction: bytes | None = None
    package_name: str | None = None
    downloads = Path(state_dir) / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isreg() or member.issparse():
                    raise VerificationError(f"bundle entry {member.name!r} is not a file")
                data_file = tar.extractfile(member)
                assert data_file is not None
                if _PACKAGE_NAME.match(member.name) and package_name is None:
                    package_name = member.name.removeprefix("package/")
                    _copy(data_file, downloads / package_name, member.size)
                    continue
                if member.size > _MAX_SMALL:
                    raise VerificationError(f"bundle entry {member.name!r} is too large")
                if member.name == "instruction" and signed_instruction is None:
                    signed_instruction = data_file.read()
                elif _METADATA_NAME.match(member.name) and \
                        member.name.removeprefix("metadata/") not in chain:
                    chain[member.name.removeprefix("metadata/")] = data_file.read()
                else:
                    raise VerificationError(f"unexpected bundle entry {member.name!r}")
    except (tarfile.TarError, EOFError, UnicodeError) as exc:
        raise VerificationError(f"bundle is not a valid archive: {exc}") from None
    if signed_instruction is None or package_name is None:
        raise VerificationError("bundle lacks its instruction or package")
    return chain, signed_instruction, package_name


def _copy(src: IO[bytes], dest: Path, size: int) -> None:
    with open(dest, "wb") as out:
        remaining = size
        while remaining:
            chunk = src.read(min(_CHUNK, remaining))
            if not chunk:
                raise VerificationError("bundle package is truncated")
            out.write(chunk)
            remaining -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
