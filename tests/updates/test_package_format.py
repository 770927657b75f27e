"""Package build/read round trip, determinism, and every malformed case the reader refuses."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from datetime import date
from pathlib import Path

import pytest

from careline.shared.errors import ConfigError, VerificationError
from careline.shared.manifest import MANIFEST_NAME, read_manifest, verify_tree
from careline.shared.package import (
    PackageInfo,
    build_package,
    extract_package,
    package_filename,
    read_package_info,
)

from .conftest import write_tree


def test_round_trip(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"bin/app.txt": "app", "Thông tư/bảng.txt": "vn"})
    os.chmod(src / "bin/app.txt", 0o755)
    out = build_package(src, tmp_path, "acct", "2025.1.0", "regulation",
                        regulation_ref="TT 200/2014/TT-BTC", effective=date(2025, 7, 1),
                        notes="new VAT rate", check=["bin/app.txt", "--self-test"])
    assert out.name == package_filename("acct", "2025.1.0") == "acct-2025.1.0.careline"
    info = read_package_info(out)
    assert info == PackageInfo(1, "acct", "2025.1.0", "regulation", "TT 200/2014/TT-BTC",
                               date(2025, 7, 1), "new VAT rate")
    dest = tmp_path / "dest"
    info2, manifest = extract_package(out, dest)
    assert info2 == info
    assert read_manifest(dest) == manifest
    assert manifest.check == ["bin/app.txt", "--self-test"]
    assert verify_tree(dest, manifest) == []
    assert (dest / "bin/app.txt").stat().st_mode & 0o777 == 0o755
    assert (dest / "Thông tư/bảng.txt").read_text() == "vn"


def test_build_is_deterministic(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"b.txt": "b", "a/c.txt": "c"})
    one = build_package(src, tmp_path / "one.careline", "acct", "1.0", "feature").read_bytes()
    os.utime(src / "b.txt", (1, 1))
    two = build_package(src, tmp_path / "two.careline", "acct", "1.0", "feature").read_bytes()
    assert one == two


@pytest.mark.parametrize("kwargs", [
    {"version": "1.0-beta"},
    {"product": "../acct"},
    {"kind": "regulation"},  # without regulation_ref
    {"check": []},
])
def test_build_rejects_bad_release_metadata(tmp_path: Path, kwargs: dict[str, object]) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": "a"})
    args: dict[str, object] = {"product": "acct", "version": "1.0", "kind": "bugfix", **kwargs}
    with pytest.raises(ConfigError):
        build_package(src, tmp_path, **args)  # type: ignore[arg-type]


def test_build_rejects_links(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": "a"})
    (src / "link").symlink_to(src / "a.txt")
    with pytest.raises(ConfigError, match="not a regular file"):
        build_package(src, tmp_path, "acct", "1.0", "bugfix")


# --- hand-crafted malicious packages ---------------------------------------------------


def _manifest(files: dict[str, bytes]) -> bytes:
    entries = {rel: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d), "mode": 0o644}
               for rel, d in files.items()}
    return json.dumps({"product": "acct", "version": "1.0", "files": entries}).encode()


RELEASE = json.dumps({"format": 1, "product": "acct", "version": "1.0",
                      "kind": "bugfix"}).encode()


def _craft(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


GOOD = {"a.txt": b"hello"}
HEAD: list[tarfile.TarInfo | tuple[str, bytes]] = [
    ("careline-release.json", RELEASE), (MANIFEST_NAME, _manifest(GOOD)),
]

MALFORMED: dict[str, list[tarfile.TarInfo | tuple[str, bytes]]] = {
    "traversal": [*HEAD, ("product/../a.txt", b"hello")],
    "absolute": [*HEAD, ("/etc/a.txt", b"hello")],
    "outside product/": [*HEAD, ("a.txt", b"hello")],
    "symlink": [*HEAD, _special("product/a.txt", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": [*HEAD, _special("product/a.txt", tarfile.LNKTYPE, "product/b")],
    "device": [*HEAD, _special("product/a.txt", tarfile.CHRTYPE)],
    "fifo": [*HEAD, _special("product/a.txt", tarfile.FIFOTYPE)],
    "directory": [*HEAD, _special("product/a.txt", tarfile.DIRTYPE)],
    "duplicate": [*HEAD, ("product/a.txt", b"hello"), ("product/a.txt", b"hello")],
    "not in manifest": [*HEAD, ("product/a.txt", b"hello"), ("product/extra", b"x")],
    "size mismatch": [*HEAD, ("product/a.txt", b"hello!")],
    "hash mismatch": [*HEAD, ("product/a.txt", b"HELLO")],
    "missing file": [*HEAD],
    "no release metadata": [(MANIFEST_NAME, _manifest(GOOD)), ("product/a.txt", b"hello")],
    "manifest with unsafe path": [
        ("careline-release.json", RELEASE), (MANIFEST_NAME, _manifest({"../a.txt": b"x"})),
    ],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_reader_refuses(tmp_path: Path, case: str) -> None:
    package = _craft(tmp_path / "bad.careline", MALFORMED[case])
    with pytest.raises(VerificationError):
        extract_package(package, tmp_path / "dest")
    assert not (tmp_path / "a.txt").exists()
    assert not Path("/etc/a.txt").exists()


def test_crafted_good_package_is_accepted(tmp_path: Path) -> None:
    """The crafting helper itself makes valid packages, so the refusals above are meaningful."""
    package = _craft(tmp_path / "ok.careline", [*HEAD, ("product/a.txt", b"hello")])
    extract_package(package, tmp_path / "dest")
    assert (tmp_path / "dest/a.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("data", [b"", b"not a package", gzip.compress(b"not a tar" * 100, mtime=0)],
                         ids=["empty", "text", "gzip-not-tar"])
def test_reader_refuses_garbage(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.careline"
    path.write_bytes(data)
    with pytest.raises(VerificationError):
        read_package_info(path)


def test_versions_compare_as_packaging_does() -> None:
    """Issue 13: 2026.2 and 2026.2.0 are one version (a tuple compare called it older,
    so a machine on 2026.2 was offered 2026.2.0 again and again)."""
    from careline.coordinator.policy.waves import Standing, version_standing
    from careline.shared.package import parse_version

    assert parse_version("2026.2") == parse_version("2026.2.0")
    assert parse_version("2026.10") > parse_version("2026.9.9")
    assert version_standing(True, "2026.2", "2026.2.0") is Standing.CURRENT
    assert version_standing(True, "2026.2", "2026.2.1") is Standing.BELOW
