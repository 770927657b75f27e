"""Issue 16 part 3: install windows are a policy value overridable per customer, site and
machine. A machine whose own window is closed is held back while its neighbour, inside the
customer's window (set by the old `customers install-window` command), installs."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from tests.conftest import wait_until
from tests.e2e.test_rollouts import installed_product, regulation_package, rollout, version_of

KEY = "rollouts.install_window"


def window(local: dt.datetime, start_hours: int, end_hours: int) -> str:
    return "-".join(f"{local + dt.timedelta(hours=h):%H:%M}" for h in (start_hours, end_hours))


def test_a_machine_window_holds_it_back_while_its_neighbour_installs(
    sqlite_coordinator, spawn_agent, tmp_path
):
    coord = sqlite_coordinator
    today = dt.datetime.now(dt.UTC).date()
    local = dt.datetime.now(ZoneInfo("Asia/Ho_Chi_Minh"))
    keys = tmp_path / "keys"
    coord.cli("release", "keys", "init", "--keys", str(keys))
    coord.cli("customers", "add", "Shop")
    coord.cli("contracts", "add", "--customer", "Shop", "--signed", today.isoformat())
    machines = {}
    for name in ("neighbour", "held"):
        product = installed_product(tmp_path / name / "acct", "1.0.0")
        agent = spawn_agent(name, coord.join_string("Shop", uses=2), "--product",
                            f"acct={product}", "--product-data", "acct=Data")
        agent.product = product
        machines[name] = agent
    held = machines["held"].agent_id

    # The customer's window is open now (old command: writes the customer level) ...
    shown = coord.cli("customers", "install-window", "Shop", "--window", window(local, -2, 2))
    assert (shown["install_window"], shown["source"]) == (window(local, -2, 2), "customer")
    # ... the held machine's own window is not.
    closed = window(local, 3, 4)
    coord.cli("policy", "set", "--machine", held, f"{KEY}={closed}")
    effective = {r["key"]: r for r in coord.cli("policy", "show", "--machine", held)}
    assert (effective[KEY]["value"], effective[KEY]["source"]) == (closed, "machine")
    theirs = {r["key"]: r for r in coord.cli("policy", "show", "--machine",
                                             machines["neighbour"].agent_id)}
    assert (theirs[KEY]["value"], theirs[KEY]["source"]) == (window(local, -2, 2), "customer")
    refused = coord.cli("policy", "set", "--machine", held, f"{KEY}=25:00-07:00", check=False)
    assert refused.returncode != 0
    assert KEY in refused.stderr

    wait_until(lambda: all(a["products"].get("acct", {}).get("version") == "1.0.0"
                           for a in coord.agents().values()))
    published = coord.cli("release", "publish", str(regulation_package(
        tmp_path, "1.1.0", today + dt.timedelta(days=30))), "--keys", str(keys))["id"]
    rid = coord.cli("rollouts", "list")[0]["id"]
    coord.cli("rollouts", "cancel", str(rid))  # one wave of both machines, deterministically
    rid = coord.cli("rollouts", "start", "--release", str(published), "--waves", "100")["id"]

    wait_until(lambda: version_of(machines["neighbour"].product) == "1.1.0", timeout=30)

    def held_back() -> bool:
        states = {m["machine"]: m for m in rollout(coord, rid)["machines"]}
        return "(machine policy)" in states[held]["detail"]

    wait_until(held_back, timeout=10)
    states = {m["machine"]: m for m in rollout(coord, rid)["machines"]}
    assert states[held]["state"] == "waiting_for_window"
    assert f"outside install window {closed}" in states[held]["detail"]
    assert version_of(machines["held"].product) == "1.0.0"

    # Unset: the machine falls back to its customer's window and installs.
    coord.cli("policy", "unset", "--machine", held, KEY)
    wait_until(lambda: version_of(machines["held"].product) == "1.1.0", timeout=30)
