"""Issue 6 end to end with real processes: release keys, publish, push to agents, jobs,
refusals, kill -9 mid-download and mid-switch, physical media, key rotation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, CoordinatorProcess, run, wait_until

TERMINAL = {"installed", "rolled_back", "refused", "failed", "verified", "mismatch"}


# ----------------------------------------------------------------------------- helpers
def build(tmp: Path, version: str, product: str = "acct", extra: int = 0) -> Path:
    """A small package of `product` at `version` (with `extra` random bytes to make it big)."""
    src = tmp / f"src-{product}-{version}"
    (src / "bin").mkdir(parents=True, exist_ok=True)
    (src / "lib").mkdir(exist_ok=True)
    (src / "bin" / "app.txt").write_text(f"app {version}\n")
    (src / "lib" / "tables.txt").write_text(f"tax tables {version}\n")
    if extra:
        (src / "lib" / "blob.bin").write_bytes(os.urandom(extra))
    out = tmp / f"{product}-{version}.careline"
    run([PYTHON, "-m", "careline.coordinator.cli", "release", "build", str(src), "--product", product,
         "--version", version, "--kind", "bugfix", "--notes", f"fixes in {version}",
         "--out", str(out)])
    return out


def installed(install_dir: Path) -> str | None:
    try:
        return str(json.loads((install_dir / "careline-manifest.json").read_text())["version"])
    except FileNotFoundError:
        return None


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def job_done(coord: CoordinatorProcess, job_id: int, timeout: float = 30.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        with coord.client() as client:
            job = client.call("jobs.show", id=job_id)
        return job if all(m["status"] in TERMINAL for m in job["machines"]) else None

    return dict(wait_until(finished, timeout=timeout, interval=0.3))


def machine(job: dict[str, Any], agent_id: str) -> dict[str, Any]:
    return next(m for m in job["machines"] if m["agent_id"] == agent_id)


@pytest.fixture
def keys(sqlite_coordinator: CoordinatorProcess, tmp_path: Path) -> Path:
    keys = tmp_path / "release-keys"
    sqlite_coordinator.cli("release", "keys", "init", "--keys", str(keys))
    return keys


def publish(coord: CoordinatorProcess, keys: Path, package: Path) -> dict[str, Any]:
    return dict(coord.cli("release", "publish", str(package), "--keys", str(keys)))


def enroll(spawn_agent: Any, tmp_path: Path, name: str, join: str, start: bool = True) -> Any:
    product_dir = tmp_path / f"{name}-Acct"
    agent = spawn_agent(name, join, "--product", f"acct={product_dir}",
                        "--product-data", "acct=Data", start=start)
    agent.product_dir = product_dir
    return agent


def push_installed(coord: CoordinatorProcess, agent: Any, version: str) -> None:
    """Push `version` to one agent and wait until it reports it installed."""
    job = coord.cli("push", "update", "--machine", agent.agent_id, "--version", version)
    assert machine(job_done(coord, job["id"]), agent.agent_id)["status"] == "installed"


def pc1_on_1_0_0(coord: CoordinatorProcess, keys: Path, spawn_agent: Any, tmp_path: Path) -> Any:
    """Release 1.0.0 published, and agent pc1 enrolled with it installed by a push."""
    publish(coord, keys, build(tmp_path, "1.0.0"))
    pc1 = enroll(spawn_agent, tmp_path, "pc1", coord.join_string())
    push_installed(coord, pc1, "1.0.0")
    return pc1


# ----------------------------------------------------------------------------- tests
def test_publish_push_two_agents_offline_catch_up_verify_reinstall(
    sqlite_coordinator, keys, spawn_agent, tmp_path
):
    coord = sqlite_coordinator
    row = publish(coord, keys, build(tmp_path, "1.0.0"))
    assert (row["product"], row["version"], row["kind"]) == ("acct", "1.0.0", "bugfix")
    stored = coord.data / "releases" / "packages" / row["sha256"][:2] / row["sha256"]
    assert stored.stat().st_size == row["length"]
    join = coord.join_string("Minh Anh", uses=2)
    pc1 = enroll(spawn_agent, tmp_path, "pc1", join)
    pc2 = enroll(spawn_agent, tmp_path, "pc2", join)
    assert (pc1.state / "tuf" / "enrollment-root.json").exists()
    wait_until(lambda: all(a["status"] == "online" for a in coord.agents().values()))

    job = coord.cli("push", "update", "--customer", "Minh Anh", "--version", "1.0.0")
    assert len(job["machines"]) == 2
    done = job_done(coord, job["id"])
    assert {m["status"] for m in done["machines"]} == {"installed"}
    steps = [s["step"] for s in machine(done, pc1.agent_id)["steps"]]
    assert steps[:2] == ["pending", "sent"]
    assert "downloading" in steps
    assert "installing" in steps
    assert installed(pc1.product_dir) == installed(pc2.product_dir) == "1.0.0"

    # Customer data appears; 1.1.0 is published while pc2 is switched off.
    (pc1.product_dir / "Data").mkdir()
    (pc1.product_dir / "Data" / "ledger.db").write_text("customer books")
    publish(coord, keys, build(tmp_path, "1.1.0"))
    assert [r["version"] for r in coord.cli("releases", "list", "--product", "acct")] == [
        "1.0.0", "1.1.0"]
    pc2.stop()
    wait_until(lambda: coord.agents()[pc2.agent_id]["status"] == "off")  # a clean stop
    job = coord.cli("push", "update", "--customer", "Minh Anh", "--version", "1.1.0")
    wait_until(lambda: installed(pc1.product_dir) == "1.1.0")
    assert (pc1.product_dir / "Data" / "ledger.db").read_text() == "customer books"
    open_jobs = coord.cli("jobs", "list", "--open")
    assert [j["id"] for j in open_jobs] == [job["id"]]
    with coord.client() as client:
        assert machine(client.call("jobs.show", id=job["id"]), pc2.agent_id)["status"] == "pending"
    pc2.start()  # offline when the job was issued: gets it on reconnect
    done = job_done(coord, job["id"])
    assert {m["status"] for m in done["machines"]} == {"installed"}
    assert installed(pc2.product_dir) == "1.1.0"
    assert coord.cli("jobs", "list", "--open") == []

    # Verify on request: intact, then a modified file is reported (and an incident signal).
    job = coord.cli("push", "verify", "--machine", pc1.agent_id)
    assert machine(job_done(coord, job["id"]), pc1.agent_id)["status"] == "verified"
    (pc1.product_dir / "lib" / "tables.txt").write_text("tampered")
    (pc1.product_dir / "stray.dll").write_text("unknown")
    job = coord.cli("push", "verify", "--machine", pc1.agent_id)
    part = machine(job_done(coord, job["id"]), pc1.agent_id)
    assert part["status"] == "mismatch"
    events = coord.cli("agents", "show", pc1.agent_id)["recent_events"]
    assert any(e["kind"] == "integrity_mismatch" and "tables.txt" in e["data"]["detail"]
               for e in events)

    # Reinstall: clean copy of the installed version, unknown file gone, data kept.
    job = coord.cli("push", "reinstall", "--machine", pc1.agent_id)
    part = machine(job_done(coord, job["id"]), pc1.agent_id)
    assert part["status"] == "installed"
    assert part["version"] == "1.1.0"
    assert (pc1.product_dir / "lib" / "tables.txt").read_text() == "tax tables 1.1.0\n"
    assert not (pc1.product_dir / "stray.dll").exists()
    assert (pc1.product_dir / "Data" / "ledger.db").read_text() == "customer books"

    # The human view renders steps (no terminal: one print, no escape codes).
    shown = run([PYTHON, "-m", "careline.coordinator.cli", "jobs", "show", str(job["id"]), "--follow",
                 "--data", str(coord.data)]).stdout
    assert "installed" in shown
    assert "\x1b[" not in shown


def _push_and_refusal(coord: CoordinatorProcess, agent: Any, version: str) -> str:
    job = coord.cli("push", "update", "--machine", agent.agent_id, "--version", version)
    part = machine(job_done(coord, job["id"]), agent.agent_id)
    assert part["status"] == "refused", part
    return str(part["detail"])


def test_tampering_is_refused_and_changes_nothing(sqlite_coordinator, keys, spawn_agent,
                                                  tmp_path):
    from datetime import timedelta

    from careline.shared.trust import OnlineRepository

    coord = sqlite_coordinator
    pc1 = pc1_on_1_0_0(coord, keys, spawn_agent, tmp_path)
    (pc1.product_dir / "Data").mkdir()
    (pc1.product_dir / "Data" / "ledger.db").write_text("books")
    row = publish(coord, keys, build(tmp_path, "1.1.0"))
    before = snapshot(pc1.product_dir)
    releases = coord.data / "releases"
    timestamp = releases / "metadata" / "timestamp.json"
    package = releases / "packages" / row["sha256"][:2] / row["sha256"]

    def tampered(path: Path, change: Any) -> Any:
        original = path.read_bytes()
        path.write_bytes(change(original))
        return original

    # A package byte.
    original = tampered(package, lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:])
    assert "sha256" in _push_and_refusal(coord, pc1, "1.1.0")
    package.write_bytes(original)
    assert snapshot(pc1.product_dir) == before

    # A metadata signature.
    def bad_signature(data: bytes) -> bytes:
        md = json.loads(data)
        sig = md["signatures"][0]["sig"]
        md["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
        return json.dumps(md).encode()

    original = tampered(timestamp, bad_signature)
    reason = _push_and_refusal(coord, pc1, "1.1.0")
    assert "update metadata refused" in reason, reason
    assert "signed" in reason.lower(), reason
    timestamp.write_bytes(original)
    assert snapshot(pc1.product_dir) == before

    # A version number (signed content edited without the key).
    def bumped(data: bytes) -> bytes:
        md = json.loads(data)
        md["signed"]["version"] += 5
        return json.dumps(md).encode()

    original = tampered(timestamp, bumped)
    assert "update metadata refused" in _push_and_refusal(coord, pc1, "1.1.0")
    timestamp.write_bytes(original)
    assert snapshot(pc1.product_dir) == before

    # An expiry: a validly signed but expired (frozen) timestamp.
    original = timestamp.read_bytes()
    repo = OnlineRepository(releases, timestamp_expiry=timedelta(seconds=-60))
    root, current = repo._root(), repo._timestamp()
    assert root is not None
    assert current is not None
    repo._write_timestamp(repo._signers(root.signed, "timestamp"),
                          repo._current_snapshot_bytes(), current.signed.expires - timedelta(days=2))
    reason = _push_and_refusal(coord, pc1, "1.1.0")
    assert "Expired" in reason or "expired" in reason, reason
    timestamp.write_bytes(original)
    assert snapshot(pc1.product_dir) == before

    # The machine id: another agent's download is refused by the coordinator ...
    pc2 = enroll(spawn_agent, tmp_path, "pc2", coord.join_string(), start=False)
    job = coord.cli("push", "update", "--machine", pc2.agent_id, "--version", "1.1.0")
    assert "no download" in _download_as(coord, pc1, job["machines"][0]["ref"])
    # ... and a bundle made for pc2 is refused on pc1 (see also test_bundle...).
    bundle = tmp_path / "pc2.careline-bundle"
    coord.cli("release", "bundle", "--machine", pc2.agent_id, "--version", "1.1.0",
              "--out", str(bundle))
    result = run([PYTHON, "-m", "careline.agent.cli", "apply-bundle", str(bundle), "--state",
                  str(pc1.state)], check=False)
    assert result.returncode == 1, result.stderr
    assert "not " + pc1.agent_id in result.stderr, result.stderr
    assert snapshot(pc1.product_dir) == before

    # Untouched, the same release installs.
    push_installed(coord, pc1, "1.1.0")
    assert installed(pc1.product_dir) == "1.1.0"
    assert (pc1.product_dir / "Data" / "ledger.db").read_text() == "books"

    # Rollback to an older version.
    after = snapshot(pc1.product_dir)
    assert "not newer" in _push_and_refusal(coord, pc1, "1.0.0")
    assert snapshot(pc1.product_dir) == after


def _download_as(coord: CoordinatorProcess, agent: Any, ref: str) -> str:
    """Authenticate as `agent` and ask for another machine's package: the error returned."""
    from websockets.sync.client import connect

    from careline.shared import protocol as p
    from careline.shared.keys import load_private_key, sign_challenge
    from careline.shared.tls import pinned_client_context

    key = load_private_key(agent.state / "agent.key")
    ca = (coord.data / "pki" / "ca.pem").read_text()
    with connect(coord.url + p.AGENT_PATH, ssl=pinned_client_context(ca),
                 max_size=p.MAX_MESSAGE_BYTES) as ws:
        challenge = p.decode(ws.recv(timeout=10), p.Challenge)
        ws.send(p.encode(p.Hello(agent_id=agent.agent_id, agent_version="test",
                                 signature=sign_challenge(key, challenge.nonce,
                                                          agent.agent_id))))
        p.decode(ws.recv(timeout=10), p.Welcome)
        ws.send(p.encode(p.Download(job=ref, offset=0)))
        while True:
            message = p.decode(ws.recv(timeout=10), p.ServerToAgent)
            if isinstance(message, p.Chunk):
                assert not message.data
                return message.error


def test_kill_mid_download_resumes_and_mid_switch_rolls_back(
    sqlite_coordinator, keys, spawn_agent, tmp_path, monkeypatch
):
    coord = sqlite_coordinator
    pc1 = pc1_on_1_0_0(coord, keys, spawn_agent, tmp_path)
    row = publish(coord, keys, build(tmp_path, "1.1.0", extra=3 << 20))

    # kill -9 in the middle of the download, restart: it resumes from the bytes it has.
    pc1.stop()
    monkeypatch.setenv("CARELINE_AGENT_TEST_PAUSE", "download")
    pc1.start()
    job = coord.cli("push", "update", "--machine", pc1.agent_id, "--version", "1.1.0")
    wait_until(lambda: (pc1.state / "paused-at-download").exists())
    pc1.kill()
    parts = list((pc1.state / "downloads").glob("*.part"))
    assert len(parts) == 1
    assert 0 < parts[0].stat().st_size < row["length"]
    assert installed(pc1.product_dir) == "1.0.0"
    monkeypatch.delenv("CARELINE_AGENT_TEST_PAUSE")
    pc1.start()
    part = machine(job_done(coord, job["id"]), pc1.agent_id)
    assert part["status"] == "installed", part
    resumed = [s["detail"] for s in part["steps"] if s["step"] == "downloading"]
    assert resumed[-1].startswith("from byte ")
    assert not resumed[-1].startswith("from byte 0 ")
    assert installed(pc1.product_dir) == "1.1.0"
    assert not list((pc1.state / "downloads").iterdir())

    # kill -9 in the middle of the switch (old version moved aside, new not yet in place).
    publish(coord, keys, build(tmp_path, "1.2.0"))
    before = snapshot(pc1.product_dir)
    pc1.stop()
    monkeypatch.setenv("CARELINE_AGENT_TEST_PAUSE", "moved_old")
    pc1.start()
    job = coord.cli("push", "update", "--machine", pc1.agent_id, "--version", "1.2.0")
    wait_until(lambda: (pc1.state / "paused-at-moved_old").exists())
    pc1.kill()
    assert not pc1.product_dir.exists()  # really mid-switch
    monkeypatch.delenv("CARELINE_AGENT_TEST_PAUSE")
    pc1.start()
    part = machine(job_done(coord, job["id"]), pc1.agent_id)
    assert part["status"] == "rolled_back", part
    assert "switching" in part["detail"], part
    assert snapshot(pc1.product_dir) == before  # a whole 1.1.0, nothing mixed
    push_installed(coord, pc1, "1.2.0")
    assert installed(pc1.product_dir) == "1.2.0"


def test_bundle_installs_with_the_coordinator_stopped(sqlite_coordinator, keys, spawn_agent,
                                                      tmp_path):
    coord = sqlite_coordinator
    pc1 = pc1_on_1_0_0(coord, keys, spawn_agent, tmp_path)
    publish(coord, keys, build(tmp_path, "1.1.0"))
    bundle = tmp_path / "pc1.careline-bundle"
    made = coord.cli("release", "bundle", "--machine", pc1.agent_id, "--version", "1.1.0",
                     "--out", str(bundle))
    assert made["size"] == bundle.stat().st_size
    pc1.stop()
    coord.stop()
    before = snapshot(pc1.product_dir)

    altered = tmp_path / "altered.careline-bundle"
    data = bytearray(bundle.read_bytes())
    for index in (700, len(data) // 2, len(data) - 80):  # header, body, seal
        data[index] ^= 0x01
        altered.write_bytes(bytes(data))
        result = run([PYTHON, "-m", "careline.agent.cli", "apply-bundle", str(altered), "--state",
                      str(pc1.state)], check=False)
        assert result.returncode == 1, result.stderr
        assert "altered" in result.stderr, result.stderr
        assert snapshot(pc1.product_dir) == before
        data[index] ^= 0x01

    out = run([PYTHON, "-m", "careline.agent.cli", "apply-bundle", str(bundle), "--state",
               str(pc1.state), "--json"])
    assert json.loads(out.stdout)["outcome"] == "installed"
    assert installed(pc1.product_dir) == "1.1.0"

    coord.start()
    pc1.start()  # reports the result when it next connects
    part = machine(job_done(coord, made["job"]["id"]), pc1.agent_id)
    assert part["status"] == "installed"


def test_agent_follows_key_rotation_then_updates(sqlite_coordinator, keys, spawn_agent,
                                                 tmp_path):
    coord = sqlite_coordinator
    pc1 = pc1_on_1_0_0(coord, keys, spawn_agent, tmp_path)
    targets_key = (keys / "targets.key").read_bytes()
    versions = [coord.cli("release", "keys", "rotate", "--keys", str(keys), "--role", role)
                ["root_version"] for role in ("root", "targets", "snapshot", "timestamp")]
    assert versions == [2, 3, 4, 5]
    assert (keys / "targets.key").read_bytes() != targets_key
    publish(coord, keys, build(tmp_path, "1.1.0"))
    push_installed(coord, pc1, "1.1.0")
    assert installed(pc1.product_dir) == "1.1.0"
    trusted = json.loads((pc1.state / "tuf" / "root.json").read_text())
    assert trusted["signed"]["version"] == 5  # walked 1 -> 5 through the TUF chain
    # A machine enrolled now starts from the first root, which its join string pins, and
    # walks the same chain on its first refresh.
    pc2 = enroll(spawn_agent, tmp_path, "pc2", coord.join_string())
    root = json.loads((pc2.state / "tuf" / "enrollment-root.json").read_text())
    assert root["signed"]["version"] == 1
