"""The update package: one file holding a product version, its manifest and release metadata.

Format: a gzip-compressed POSIX (pax) tar with, in this order,

    careline-release.json      PackageInfo: product, version, kind, regulation, notes
    careline-manifest.json     shared.manifest.Manifest: every file's sha256, size, mode
    product/<path>             the product files, sorted by path

Entries have fixed mtime/uid/gid and no owner names and gzip has mtime 0, so the same
inputs give the same bytes (reproducible, and the TUF hash is stable). The reader works as a
stream, never calls tarfile's extract, and accepts only regular files named in the manifest
with matching size, mode and hash: links, devices, traversal and duplicates are refused.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import IO, Literal

import msgspec
from packaging.version import Version

from careline.shared.errors import ConfigError, VerificationError
from careline.shared.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    build_manifest,
    decode_manifest,
    encode_manifest,
    is_safe_relative_path,
)

PACKAGE_SUFFIX = ".careline"
RELEASE_NAME = "careline-release.json"
PRODUCT_PREFIX = "product/"
FORMAT = 1
_MAX_RELEASE = 1 << 20
_MAX_MANIFEST = 64 << 20
_CHUNK = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+){0,5}$")

Kind = Literal["bugfix", "regulation", "feature"]


class PackageInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    product: str
    version: str
    kind: Kind
    # e.g. the circular a tax or payroll change implements, and the date it takes effect.
    regulation_ref: str | None = None
    effective: date | None = None
    notes: str | None = None


def parse_version(version: str) -> Version:
    """Numeric dotted versions only, so "older than installed" has one meaning everywhere,
    compared as `packaging` does: 2026.2 equals 2026.2.0 (a tuple would call it older)."""
    if not _VERSION.match(version):
        raise ConfigError(f"version {version!r} must be dotted numbers, e.g. 2025.1.3")
    return Version(version)


def check_product_name(product: str) -> str:
    if not _NAME.match(product):
        raise ConfigError(f"product name {product!r} must be letters, digits, '.', '_' or '-'")
    return product


def package_filename(product: str, version: str) -> str:
    return f"{product}-{version}{PACKAGE_SUFFIX}"


def _source_files(source_dir: Path) -> Iterator[Path]:
    for dirpath, dirs, files in os.walk(source_dir):
        for name in dirs + files:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ConfigError(f"{path} is not a regular file; packages hold only files")
            if stat.S_ISREG(mode):
                yield path


class _HashingReader:
    """Feeds tarfile while hashing, so a file changed during the build is caught."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.digest.update(data)
        return data


def _tarinfo(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def build_package(
    source_dir: Path,
    out: Path,
    product: str,
    version: str,
    kind: Kind,
    *,
    regulation_ref: str | None = None,
    effective: date | None = None,
    notes: str | None = None,
    check: list[str] | None = None,
) -> Path:
    """Write the package for `source_dir` to `out` (a file, or a directory for the default
    name `PRODUCT-VERSION.careline`) and return its path."""
    check_product_name(product)
    parse_version(version)
    if kind == "regulation" and not regulation_ref:
        raise ConfigError("a regulation package must name its regulation (regulation_ref)")
    if check is not None and not check:
        raise ConfigError("check must be a non-empty argv list")
    source_dir = Path(source_dir)
    for path in _source_files(source_dir):
        rel = path.relative_to(source_dir).as_posix()
        if not is_safe_relative_path(rel):
            raise ConfigError(f"file name {rel!r} cannot be packaged")
    manifest = build_manifest(source_dir, product, version, check)
    info = PackageInfo(FORMAT, product, version, kind, regulation_ref, effective, notes)
    out = Path(out)
    if out.is_dir():
        out = out / package_filename(product, version)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name, data in (
                    (RELEASE_NAME, msgspec.json.encode(info)),
                    (MANIFEST_NAME, encode_manifest(manifest)),
                ):
                    tar.addfile(_tarinfo(name, len(data), 0o644), io.BytesIO(data))
                for rel, entry in sorted(manifest.files.items()):
                    with open(source_dir / rel, "rb") as f:
                        reader = _HashingReader(f)
                        tar.addfile(
                            _tarinfo(PRODUCT_PREFIX + rel, entry.size, entry.mode), reader
                        )
                    if reader.digest.hexdigest() != entry.sha256:
                        raise ConfigError(f"{rel} changed while the package was being built")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return out


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeError)


@contextlib.contextmanager
def _open_stream(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            yield tar
    except _READ_ERRORS as exc:
        raise VerificationError(f"{path.name} is not a valid Careline package: {exc}") from None


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo | None, name: str,
                limit: int) -> bytes:
    if member is None or member.name != name or not member.isreg():
        raise VerificationError(f"package must start with {RELEASE_NAME} and {MANIFEST_NAME}")
    if member.size > limit:
        raise VerificationError(f"package {name} is too large")
    f = tar.extractfile(member)
    assert f is not None  # a regular member always has data
    return f.read()


def _decode_info(data: bytes) -> PackageInfo:
    try:
        info = msgspec.json.decode(data, type=PackageInfo)
    except msgspec.DecodeError as exc:
        raise VerificationError(f"package release metadata is invalid: {exc}") from None
    if info.format != FORMAT:
        raise VerificationError(f"package format {info.format} is not supported")
    return info


def read_package_info(path: Path) -> PackageInfo:
    """The release metadata, read from the first entry without extracting anything."""
    path = Path(path)
    with _open_stream(path) as tar:
        return _decode_info(_read_small(tar, tar.next(), RELEASE_NAME, _MAX_RELEASE))


def extract_package(path: Path, dest: Path) -> tuple[PackageInfo, Manifest]:
    """Unpack the product files and the manifest into the new directory `dest`, checking every
    entry against the manifest. `dest` holds exactly the install on success; on failure it is
    left partial for the caller to delete."""
    path = Path(path)
    dest = Path(dest)
    with _open_stream(path) as tar:
        info = _decode_info(_read_small(tar, tar.next(), RELEASE_NAME, _MAX_RELEASE))
        manifest_bytes = _read_small(tar, tar.next(), MANIFEST_NAME, _MAX_MANIFEST)
        try:
            manifest = decode_manifest(manifest_bytes)
        except ConfigError as exc:
            raise VerificationError(str(exc)) from None
        if (manifest.product, manifest.version) != (info.product, info.version):
            raise VerificationError("package manifest and release metadata disagree")
        dest.mkdir()
        _write_file(dest / MANIFEST_NAME, io.BytesIO(manifest_bytes), len(manifest_bytes),
                    0o644)
        seen: set[str] = set()
        while (member := tar.next()) is not None:
            rel = member.name.removeprefix(PRODUCT_PREFIX)
            if not member.name.startswith(PRODUCT_PREFIX) or not is_safe_relative_path(rel):
                raise VerificationError(f"package entry {member.name!r} has an unsafe name")
            if not member.isreg() or member.issparse():
                raise VerificationError(f"package entry {member.name!r} is not a regular file")
            if rel in seen:
                raise VerificationError(f"package entry {member.name!r} appears twice")
            entry = manifest.files.get(rel)
            if entry is None:
                raise VerificationError(f"package entry {member.name!r} is not in the manifest")
            if member.size != entry.size or stat.S_IMODE(member.mode) != entry.mode:
                raise VerificationError(f"package entry {member.name!r} differs from manifest")
            seen.add(rel)
            f = tar.extractfile(member)
            assert f is not None
            _extract_one(dest, rel, f, entry)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise VerificationError(f"package lacks files named in its manifest: {missing[:5]}")
    return info, manifest


def _extract_one(dest: Path, rel: str, f: IO[bytes], entry: FileEntry) -> None:
    target = dest / rel
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = _write_file(target, f, entry.size, entry.mode & 0o777)
    except (FileExistsError, NotADirectoryError):
        raise VerificationError(f"package entry {rel!r} collides with another") from None
    if digest != entry.sha256:
        raise VerificationError(f"package entry {rel!r} does not match its manifest hash")


def _write_file(target: Path, f: IO[bytes], size: int, mode: int) -> str:
    """Copy exactly `size` bytes into a new file, fsynced; returns the sha256."""
    digest = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        remaining = size
        while remaining:
            chunk = f.read(min(_CHUNK, remaining))
            if not chunk:
                raise VerificationError(f"package entry {target.name!r} is truncated")
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(target, mode)
    return digest.hexdigest()
