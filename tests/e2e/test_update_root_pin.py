"""A coordinator that serves another update root than the one join strings pin cannot
enroll agents into it (issue 12, item 5), against a real coordinator and agent."""

from __future__ import annotations

import json

from careline.shared.keys import JoinString, root_pin
from careline.shared.trust import init_release_keys
from tests.conftest import PYTHON, run


def test_substituted_root_is_refused(sqlite_coordinator, tmp_path):
    coord = sqlite_coordinator
    made = coord.cli("release", "keys", "init", "--keys", str(tmp_path / "keys"))
    genuine = (coord.data / "releases" / "metadata" / "1.root.json").read_bytes()
    assert made["root_pin"] == root_pin(genuine)
    coord.cli("customers", "add", "Acme")
    created = coord.cli("tokens", "create", "--customer", "Acme", "--uses", "3")
    join = created["join"]
    assert JoinString.parse(join).root_pin == made["root_pin"] == created["root_pin"]

    # The coordinator is taken over: it serves a root whose keys the attacker holds.
    with coord.client() as client:
        online = client.call("releases.online_keys")["keys"].encode()
    forged = init_release_keys(tmp_path / "attacker-keys", online).root
    (coord.data / "releases" / "metadata" / "1.root.json").write_bytes(forged)

    state = tmp_path / "pc1"
    refused = run([PYTHON, "-m", "careline.agent.cli", "enroll", "-", "--state", str(state)],
                  check=False, input=join + "\n")
    assert refused.returncode == 1
    assert "update root does not match" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (state / "agent.json").exists()
    assert not (state / "tuf").exists()
    assert not (state / "agent.key").exists()  # registered with an untrusted coordinator

    # A technician who set the vendor's pin is told not to hand out the forged join string.
    refused = run(
        [PYTHON, "-m", "careline.coordinator.cli", "tokens", "create", "--customer", "Acme",
         "--data", str(coord.data), "--expect-root", made["root_pin"]], check=False)
    assert refused.returncode == 1
    assert "do not hand it out" in refused.stderr

    # With the genuine root back, the same join string (read from a file) enrolls.
    (coord.data / "releases" / "metadata" / "1.root.json").write_bytes(genuine)
    (tmp_path / "join.txt").write_text(join)
    run([PYTHON, "-m", "careline.agent.cli", "enroll", "--join-file", str(tmp_path / "join.txt"),
         "--state", str(state)])
    anchor = json.loads((state / "tuf" / "enrollment-root.json").read_text())
    assert anchor["signed"]["version"] == 1


def test_agent_enrolled_before_release_keys_updates_only_after_a_local_pin(
    sqlite_coordinator, spawn_agent, tmp_path
):
    from tests.e2e.test_updates import build, enroll, installed, job_done, machine, publish

    coord = sqlite_coordinator
    pc1 = enroll(spawn_agent, tmp_path, "pc1", coord.join_string())  # no release keys yet
    keys = tmp_path / "keys"
    pin = coord.cli("release", "keys", "init", "--keys", str(keys))["root_pin"]
    publish(coord, keys, build(tmp_path, "1.0.0"))

    job = coord.cli("push", "update", "--machine", pc1.agent_id, "--version", "1.0.0")
    refused = machine(job_done(coord, job["id"]), pc1.agent_id)
    assert refused["status"] == "refused"
    assert "pin-root" in refused["detail"]
    assert not (pc1.state / "tuf").exists()  # nothing taken from the coordinator on trust

    run([PYTHON, "-m", "careline.agent.cli", "pin-root", pin, "--state", str(pc1.state)])
    job = coord.cli("push", "update", "--machine", pc1.agent_id, "--version", "1.0.0")
    assert machine(job_done(coord, job["id"]), pc1.agent_id)["status"] == "installed"
    assert installed(pc1.product_dir) == "1.0.0"
