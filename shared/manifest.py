"""The product manifest: what a correct install of one product version contains.

It lives as `careline-manifest.json` at the top of a product's install dir and inside every
update package. The agent reads the installed version from it and checks the files against it
(tampering, virus damage, half-written installs).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec

from careline.shared.errors import ConfigError

MANIFEST_NAME = "careline-manifest.json"
_CHUNK = 1 << 20


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sha256: str
    size: int
    mode: int = 0o644


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    product: str
    version: str
    files: dict[str, FileEntry]
    # argv run inside the install dir after a switch; exit 0 means the install works.
    check: list[str] | None = None


class Mismatch(msgspec.Struct, frozen=True):
    path: str
    problem: str  # "missing" | "modified" | "unexpected"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath, name)


def build_manifest(
    root: Path, product: str, version: str, check: list[str] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> Manifest:
    """Describe every regular file under `root` (the manifest file itself excluded)."""
    files: dict[str, FileEntry] = {}
    for path in sorted(_walk_files(root)):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME or rel.split("/", 1)[0] in exclude:
            continue
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            continue
        files[rel] = FileEntry(sha256_file(path), st.st_size, stat.S_IMODE(st.st_mode))
    return Manifest(product=product, version=version, files=files, check=check)


def encode_manifest(manifest: Manifest) -> bytes:
    return json.dumps(msgspec.to_builtins(manifest), indent=1, sort_keys=True).encode()


# Names Windows maps to devices whatever the folder or extension ("NUL", "aux.txt").
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{kind}{n}" for kind in ("COM", "LPT") for n in [*"123456789", "\u00b9", "\u00b2", "\u00b3"]}
)
_WINDOWS_FORBIDDEN = frozenset('<>"|?*') | {chr(c) for c in range(32)}


def _windows_safe_name(part: str) -> bool:
    """One path segment that names the same file on Windows as on POSIX: not a device, no
    trailing dot or space (Windows drops them: "a." is "a", "..." is the folder itself),
    no character Windows refuses."""
    return not (
        part.endswith((".", " "))
        or part.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES
        or any(c in _WINDOWS_FORBIDDEN for c in part)
    )


def is_safe_relative_path(rel: str) -> bool:
    """A POSIX path that stays inside the directory it is joined to, on Windows too, and
    names a plain file there."""
    parts = rel.split("/")
    return bool(rel) and not (
        rel.startswith("/") or "\\" in rel or ":" in rel or "\x00" in rel
        or any(part in ("", ".", "..") or not _windows_safe_name(part) for part in parts)
    )


def decode_manifest(data: bytes) -> Manifest:
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"invalid product manifest: {exc}") from None
    for rel in manifest.files:
        if not is_safe_relative_path(rel):
            raise ConfigError(f"invalid product manifest: unsafe path {rel!r}")
    return manifest


def read_manifest(install_dir: Path) -> Manifest | None:
    """The manifest of the product installed in `install_dir`, or None if there is none."""
    try:
        data = (install_dir / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        return None
    return decode_manifest(data)


def verify_tree(
    root: Path, manifest: Manifest, ignore: frozenset[str] = frozenset()
) -> list[Mismatch]:
    """Every difference between the files under `root` and the manifest.

    `ignore` names top-level entries (e.g. the product's data directory) that are not part
    of the product and are neither checked nor reported.
    """
    problems: list[Mismatch] = []
    for rel, entry in manifest.files.items():
        path = root / rel
        try:
            st = path.lstat()
        except FileNotFoundError:
            problems.append(Mismatch(rel, "missing"))
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size or sha256_file(
            path
        ) != entry.sha256:
            problems.append(Mismatch(rel, "modified"))
    for path in _walk_files(root):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME or rel.split("/", 1)[0] in ignore:
            continue
        if rel not in manifest.files:
            problems.append(Mismatch(rel, "unexpected"))
    return sorted(problems, key=lambda m: m.path)
