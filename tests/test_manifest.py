"""shared.manifest: a product install described, checked, and safely (de)serialised."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careline.shared.errors import ConfigError
from careline.shared.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    Mismatch,
    build_manifest,
    decode_manifest,
    encode_manifest,
    read_manifest,
    sha256_file,
    verify_tree,
)

FILES = {
    "app.exe": b"MZ binary",
    "lib/core.dll": b"core " * 100,
    "lib/plugins/tax.dll": b"tax",
    "data/customer.db": b"customer data",
    "empty.txt": b"",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "install"
    for rel, data in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "app.exe").chmod(0o755)
    return root


def test_build_manifest_describes_every_file(tree: Path) -> None:
    manifest = build_manifest(tree, "acct", "2.1.0", check=["app.exe", "--self-test"])
    assert (manifest.product, manifest.version, manifest.check) == (
        "acct", "2.1.0", ["app.exe", "--self-test"])
    assert set(manifest.files) == set(FILES)
    for rel, data in FILES.items():
        entry = manifest.files[rel]
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.size == len(data)
    assert manifest.files["app.exe"].mode == 0o755
    assert manifest.files["lib/core.dll"].mode == 0o644
    assert list(manifest.files) == sorted(manifest.files)  # stable order


def test_build_manifest_skips_itself_symlinks_and_excluded_entries(tree: Path) -> None:
    (tree / MANIFEST_NAME).write_bytes(b"{}")
    (tree / "link.exe").symlink_to(tree / "app.exe")
    (tree / "lib" / "linkdir").symlink_to(tree / "lib" / "plugins")
    manifest = build_manifest(tree, "acct", "1", exclude=frozenset({"data"}))
    assert set(manifest.files) == set(FILES) - {"data/customer.db"}


def test_untouched_tree_verifies_clean(tree: Path) -> None:
    manifest = build_manifest(tree, "acct", "1")
    (tree / MANIFEST_NAME).write_bytes(encode_manifest(manifest))  # the manifest itself is fine
    assert verify_tree(tree, manifest) == []


def test_verify_tree_reports_missing_modified_and_unexpected(tree: Path) -> None:
    manifest = build_manifest(tree, "acct", "1")
    (tree / "lib" / "plugins" / "tax.dll").unlink()
    (tree / "app.exe").write_bytes(b"MZ binarY")  # same size, other content
    (tree / "empty.txt").write_bytes(b"now has content")  # other size
    (tree / "virus.exe").write_bytes(b"evil")
    (tree / "lib" / "new").mkdir()
    (tree / "lib" / "new" / "dropped.dll").write_bytes(b"x")
    assert verify_tree(tree, manifest) == [
        Mismatch("app.exe", "modified"),
        Mismatch("empty.txt", "modified"),
        Mismatch("lib/new/dropped.dll", "unexpected"),
        Mismatch("lib/plugins/tax.dll", "missing"),
        Mismatch("virus.exe", "unexpected"),
    ]


def test_a_directory_or_symlink_in_place_of_a_file_is_modified(tree: Path) -> None:
    manifest = build_manifest(tree, "acct", "1")
    (tree / "empty.txt").unlink()
    (tree / "empty.txt").mkdir()
    (tree / "app.exe").unlink()
    evil = tree.parent / "evil.exe"
    evil.write_bytes(FILES["app.exe"])  # identical content behind a symlink
    (tree / "app.exe").symlink_to(evil)
    problems = {m.path: m.problem for m in verify_tree(tree, manifest)}
    assert problems["empty.txt"] == "modified"
    assert problems["app.exe"] == "modified"


def test_ignore_skips_top_level_entries_only(tree: Path) -> None:
    manifest = build_manifest(tree, "acct", "1", exclude=frozenset({"data"}))
    (tree / "data" / "more.db").write_bytes(b"user data")
    (tree / "data" / "customer.db").write_bytes(b"changed by the user")
    assert verify_tree(tree, manifest, ignore=frozenset({"data"})) == []
    # Without the ignore set, the customer's data shows up as unexpected.
    assert {m.problem for m in verify_tree(tree, manifest)} == {"unexpected"}
    # A nested directory called "data" is not ignored.
    (tree / "lib" / "data").mkdir()
    (tree / "lib" / "data" / "x.dll").write_bytes(b"x")
    assert verify_tree(tree, manifest, ignore=frozenset({"data"})) == [
        Mismatch("lib/data/x.dll", "unexpected")]


def test_ignore_does_not_hide_manifest_files(tree: Path) -> None:
    # If a manifest lists a file under an ignored entry, it is still checked.
    manifest = build_manifest(tree, "acct", "1")
    (tree / "data" / "customer.db").unlink()
    assert verify_tree(tree, manifest, ignore=frozenset({"data"})) == [
        Mismatch("data/customer.db", "missing")]


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 17)  # crosses the 1 MiB read chunk
    (tmp_path / "big").write_bytes(data)
    assert sha256_file(tmp_path / "big") == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- encoding
def test_encode_decode_round_trip(tree: Path) -> None:
    manifest = build_manifest(tree, "acct", "2.0", check=["app.exe", "--check"])
    data = encode_manifest(manifest)
    assert decode_manifest(data) == manifest
    assert encode_manifest(decode_manifest(data)) == data  # canonical
    as_json = json.loads(data)
    assert as_json["files"]["app.exe"] == {"sha256": manifest.files["app.exe"].sha256,
                                           "size": len(FILES["app.exe"]), "mode": 0o755}


def test_read_manifest(tree: Path) -> None:
    assert read_manifest(tree) is None
    manifest = build_manifest(tree, "acct", "3")
    (tree / MANIFEST_NAME).write_bytes(encode_manifest(manifest))
    assert read_manifest(tree) == manifest
    (tree / MANIFEST_NAME).write_bytes(b"{broken")
    with pytest.raises(ConfigError):
        read_manifest(tree)


segment = st.text(
    alphabet=st.characters(blacklist_characters='/\\:<>"|?*', blacklist_categories=["Cs", "Cc"]),
    min_size=1, max_size=12,
).filter(lambda s: not s.endswith((".", " "))
         and s.split(".", 1)[0].rstrip(" ").upper() not in {"CON", "PRN", "AUX", "NUL"}
         and not re.fullmatch(r"(COM|LPT)[1-9\u00b9\u00b2\u00b3]|CONIN\$|CONOUT\$",
                              s.split(".", 1)[0].rstrip(" ").upper()))
safe_paths = st.lists(segment, min_size=1, max_size=4).map("/".join)
entries = st.builds(
    FileEntry,
    sha256=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    size=st.integers(min_value=0, max_value=2**53),
    mode=st.integers(min_value=0, max_value=0o7777),
)


@settings(max_examples=100)
@given(
    product=st.text(max_size=20), version=st.text(max_size=20),
    files=st.dictionaries(safe_paths, entries, max_size=5),
    check=st.none() | st.lists(st.text(max_size=10), max_size=3),
)
def test_encode_decode_round_trip_property(
    product: str, version: str, files: dict[str, FileEntry], check: list[str] | None
) -> None:
    manifest = Manifest(product=product, version=version, files=files, check=check)
    assert decode_manifest(encode_manifest(manifest)) == manifest


def manifest_with(*paths: str) -> bytes:
    entry = {"sha256": "0" * 64, "size": 0}
    return json.dumps({"product": "p", "version": "1", "files": {p: entry for p in paths}}).encode()


@pytest.mark.parametrize(
    "path",
    ["../x", "a/../../x", "..", "/abs", "/etc/passwd", "a//b", "a/", "", "a\\b", "..\\x"],
)
def test_decode_refuses_unsafe_paths(path: str) -> None:
    with pytest.raises(ConfigError, match="unsafe path"):
        decode_manifest(manifest_with("ok.txt", path))


@pytest.mark.parametrize("path", ["C:/Windows/System32/evil.dll", "D:evil.dll", "a\x00b", "./a"])
def test_decode_refuses_drive_nul_and_dot_paths(path: str) -> None:
    # On a Windows agent, install_dir / "C:/Windows/..." is C:/Windows/... itself; a NUL makes
    # verify_tree raise ValueError instead of reporting a mismatch.
    with pytest.raises(ConfigError, match="unsafe path"):
        decode_manifest(manifest_with(path))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"product": "p", "version": "1"}',  # no files
        b'{"product": "p", "version": "1", "files": {"a": {"sha256": "x"}}}',  # no size
        b'{"product": "p", "version": "1", "files": {}, "extra": 1}',
        b'{"product": "p", "version": 1, "files": {}}',
        b'{"product": "p", "version": "1", "files": {}, "check": "app --check"}',
    ],
)
def test_decode_refuses_malformed_manifests(data: bytes) -> None:
    with pytest.raises(ConfigError, match="invalid product manifest"):
        decode_manifest(data)


@pytest.mark.parametrize("path", [
    "NUL", "nul", "aux.txt", "bin/CON.dll", "Com1", "lpt9.log", "COM\u00b9", "conin$", "nul .txt",
    "a.", "bin/a ", "...", "dir./x", "a<b", "a|b", "a?", "a*", 'a"b', "a\tb", "a\x1fb",
])
def test_decode_refuses_names_windows_treats_differently(path: str) -> None:
    # Devices would read or write the console or a port instead of a file; trailing dots
    # and spaces are dropped, so two manifest entries could name one file.
    with pytest.raises(ConfigError, match="unsafe path"):
        decode_manifest(manifest_with(path))


def test_drive_paths_would_escape_a_windows_install_dir() -> None:
    # Why the test above matters: pathlib on Windows replaces the root for these names.
    root = PureWindowsPath("C:/Program Files/acct")
    assert not (root / "C:/Windows/System32/evil.dll").is_relative_to(root)
    assert not (root / "D:evil.dll").is_relative_to(root)


def test_safe_paths_stay_inside_the_install_dir() -> None:
    root = PurePosixPath("/opt/acct")
    for rel in ("a", "a/b/c.dll", "a..b", "...x", ".hidden/x", "nullable.txt", "com10", "con-fig"):
        decoded = decode_manifest(manifest_with(rel))
        assert (root / next(iter(decoded.files))).is_relative_to(root)
