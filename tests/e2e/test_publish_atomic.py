"""Release publishing is all or nothing (issue 13, item 11): when the database refuses the
release row, the TUF metadata clients see is what it was, and publishing again works."""

from __future__ import annotations

import sqlite3

from tests.e2e.test_updates import build, keys, publish  # noqa: F401

FAIL = ("CREATE TRIGGER careline_fail BEFORE INSERT ON releases"
        " BEGIN SELECT RAISE(ABORT, 'injected failure'); END")


def test_failed_row_leaves_metadata_as_it_was(sqlite_coordinator, keys, tmp_path):  # noqa: F811
    coord = sqlite_coordinator
    publish(coord, keys, build(tmp_path, "1.0.0"))
    before = coord.cli("releases", "list")
    with coord.client() as client:
        targets_before = client.call("releases.current_targets")["targets"]
    db = coord.data / "careline.db"
    with sqlite3.connect(db) as conn:
        conn.execute(FAIL)
    package = build(tmp_path, "1.1.0")
    failed = coord.cli("release", "publish", str(package), "--keys", str(keys), check=False)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    with coord.client() as client:
        assert client.call("releases.current_targets")["targets"] == targets_before
    assert coord.cli("releases", "list") == before
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER careline_fail")
    row = publish(coord, keys, package)
    assert row["version"] == "1.1.0"
    assert sorted(r["version"] for r in coord.cli("releases", "list")) == ["1.0.0", "1.1.0"]
