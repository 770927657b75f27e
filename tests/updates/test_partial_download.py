"""Resumable package download: bounded by the signed length, hash-checked at the end."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from careline.shared.errors import ProtocolError, VerificationError
from careline.shared.trust import PartialDownload

from .conftest import Release, instruction_for, make_package


def test_resume_after_disconnect(release: Release) -> None:
    package = release.publish("1.0.0")
    data = package.read_bytes()
    instr = instruction_for(package, "1.0.0")
    first = PartialDownload(release.agent_state, instr)
    first.write(0, data[:100])
    resumed = PartialDownload(release.agent_state, instr)  # e.g. after an agent restart
    assert resumed.offset == 100
    with pytest.raises(ProtocolError):
        resumed.write(0, data[:100])
    resumed.write(100, data[100:])
    path = resumed.finish()
    release.trust().verify_package(instr, path)


def test_longer_than_signed_length_refused(tmp_path: Path) -> None:
    package = make_package(tmp_path, "1.0.0")
    instr = instruction_for(package, "1.0.0")
    download = PartialDownload(tmp_path / "state", instr)
    download.write(0, package.read_bytes())
    with pytest.raises(VerificationError, match="signed length"):
        download.write(instr.length, b"more")
    assert download.offset == 0


def test_hash_mismatch_refused(tmp_path: Path) -> None:
    package = make_package(tmp_path, "1.0.0")
    instr = instruction_for(package, "1.0.0")
    download = PartialDownload(tmp_path / "state", msgspec.structs.replace(instr, sha256="0" * 64))
    download.write(0, package.read_bytes())
    with pytest.raises(VerificationError, match="sha256"):
        download.finish()
    assert download.offset == 0


def test_abandoned_upload_pieces_are_pruned(tmp_path) -> None:
    """Issue 13: a `releases.upload` never published left its .part file forever."""
    import os
    import time

    from careline.coordinator.updates import UPLOAD_MAX_AGE_SECONDS, prune_uploads

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    now = time.time()
    old, fresh, bundle = uploads / "a1.part", uploads / "b2.part", uploads / "x.careline-bundle"
    for path in (old, fresh, bundle):
        path.write_bytes(b"piece")
    os.utime(old, (now - UPLOAD_MAX_AGE_SECONDS - 60,) * 2)
    os.utime(bundle, (now - UPLOAD_MAX_AGE_SECONDS - 60,) * 2)
    assert prune_uploads(uploads, now) == 1
    assert not old.exists()
    assert fresh.exists()
    assert bundle.exists()
    assert prune_uploads(tmp_path / "missing", now) == 0
