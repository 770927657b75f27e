"""Issue 16 part 3 end to end: overrides set from the CLI per customer, site and machine,
shown with their sources, used by decisions (and named by `explain`), audited; an invalid
override is refused and nothing is stored."""

from __future__ import annotations

import pytest

from careline.shared.errors import CarelineError

FEE = "fees.onsite_reinstall_vnd"


def test_overrides_per_level_decide_and_explain(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    with coord.client() as client:
        client.call("customers.add", name="Benh vien")
        client.call("sites.add", customer="Benh vien", name="Khoa Noi")
        join = client.call("tokens.create", customer="Benh vien", uses=2, expires_seconds=600,
                           site="Khoa Noi")["join"]
        pc = spawn_agent("pc", join, start=False).agent_id
        other = spawn_agent("other", join, start=False).agent_id

        shown = coord.cli("policy", "set", "--customer", "Benh vien", f"{FEE}=450000",
                          "due.same_day_cutoff=16:00")
        assert {r["key"]: (r["value"], r["source"]) for r in shown}[FEE] == (450_000, "customer")
        client.call("policy.set", customer="Benh vien", site="Khoa Noi",
                    assignments=["fees.technician_visit_vnd=700000"])
        client.call("policy.set", machine=other, assignments=[f"{FEE}=0"])

        effective = {r["key"]: r for r in coord.cli("policy", "show", "--machine", pc)}
        assert (effective[FEE]["value"], effective[FEE]["source"]) == (450_000, "customer")
        assert effective["fees.technician_visit_vnd"]["source"] == "site"
        assert effective["due.same_day_cutoff"]["value"] == "16:00"
        assert effective["fees.remote_update_vnd"]["source"] == "default"
        theirs = {r["key"]: r for r in client.call("policy.show", machine=other)}
        assert (theirs[FEE]["value"], theirs[FEE]["source"]) == (0, "machine")
        vendor = {r["key"]: r for r in client.call("policy.show")}
        assert vendor[FEE]["value"] == 500_000
        assert vendor[FEE]["source"] == "default"

        # A disk failure: on-site reinstall at the customer's own price, and explain says so.
        incident = client.call("incidents.open", machine=pc, category="disk", severity="high")
        assert incident["decision"]["fee_vnd"] == 450_000
        explained = client.call("incidents.explain", id=incident["id"])
        assert any("fees.onsite_reinstall_vnd set by the customer policy" in r
                   for r in explained["reasons"])
        assert explained["facts"]["policy"][FEE] == "customer"
        # Waiting on the customer and resuming decides again: the same visit, its due time
        # moved with the decision's (by the business time paused, here seconds or none).
        client.call("incidents.wait", id=incident["id"], note="ward closed")
        resumed = client.call("incidents.resume", id=incident["id"])
        visits = [v for v in client.call("visits.list") if v["incident_id"] == incident["id"]]
        assert len(visits) == 1
        assert visits[0]["due_at"] == resumed["decision"]["due_at"]
        assert resumed["decision"]["due_at"] >= incident["decision"]["due_at"]
        theirs = client.call("incidents.open", machine=other, category="disk", severity="high")
        assert theirs["decision"]["fee_vnd"] == 0

        # Refused, naming the key; nothing stored (all or nothing).
        refused = coord.cli("policy", "set", "--customer", "Benh vien", f"{FEE}=1",
                            "fees.onsite_reinstal_vnd=1", check=False)
        assert refused.returncode == 1
        assert "unknown policy key 'fees.onsite_reinstal_vnd'" in refused.stderr
        for bad, message in ((f"{FEE}=cheap", f"{FEE} must be a number"),
                             (f"{FEE}=-5", f"{FEE} must be an integer >= 0"),
                             ("tiers.premium.onsite_visits_per_year=9", "cannot be overridden")):
            with pytest.raises(CarelineError, match=message):
                client.call("policy.set", customer="Benh vien", assignments=[bad])
        after = {r["key"]: r for r in client.call("policy.show", machine=pc)}
        assert after == effective

        # Unset: back to the vendor's value; a decision taken again uses it.
        client.call("policy.unset", customer="Benh vien", keys=[FEE])
        assert {r["key"]: r for r in client.call("policy.show", machine=pc)}[FEE]["source"] \
            == "default"
        again = client.call("incidents.redecide", id=incident["id"])
        assert again["fee_vnd"] == 500_000
        with pytest.raises(CarelineError, match=f"no override of {FEE}"):
            client.call("policy.unset", customer="Benh vien", keys=[FEE])

        audit = [a for a in client.call("audit.list") if a["action"].startswith("policy.")]
        assert [(a["action"], a["detail"]["key"]) for a in reversed(audit)] == [
            ("policy.set", FEE), ("policy.set", "due.same_day_cutoff"),
            ("policy.set", "fees.technician_visit_vnd"), ("policy.set", FEE),
            ("policy.unset", FEE)]
        assert audit[0]["detail"]["previous"] == 450_000

        token = client.call("technicians.add", name="lan", role="technician")["token"]
    with coord.client(token) as lan, pytest.raises(CarelineError, match="needs the admin role"):
        lan.call("policy.set", customer="Benh vien", assignments=[f"{FEE}=1"])
