"""Is a newly enrolled PC one we know? Matching hardware identities to a link decision."""

import pytest

from careline.coordinator.policy.identity import Candidate, link_decision, matched, strength

PC = {"uuid": "u1", "serial": "s1", "disk": "d1", "mac": "m1"}


@pytest.mark.parametrize(
    ("new", "fields", "expected"),
    [
        (PC, ("uuid", "serial", "disk", "mac"), "strong"),  # reinstalled, same PC
        ({**PC, "mac": "m2"}, ("uuid", "serial", "disk"), "strong"),  # new network card
        ({**PC, "uuid": "u2", "serial": "s2", "mac": "m2"}, ("disk",), "weak"),  # cloned disk
        ({**PC, "disk": "d2"}, ("uuid", "serial", "mac"), "weak"),  # new disk: not automatic
        ({"uuid": "u1"}, ("uuid",), "weak"),  # the OS hid everything but the UUID
        ({"uuid": "u9", "disk": "d9"}, (), None),
        ({}, (), None),
    ],
)
def test_matched_fields_and_strength(new, fields, expected):
    assert matched(new, PC) == fields
    assert strength(fields) == expected


def test_missing_values_never_match_each_other():
    assert matched({"uuid": None, "disk": ""}, {"uuid": None, "disk": ""}) == ()


@pytest.mark.parametrize(
    ("candidates", "kind", "machine", "reason"),
    [
        ([], "new", None, "no known machine"),
        ([Candidate("ag-old", ("uuid", "disk"), online=False)], "auto", "ag-old", "offline"),
        ([Candidate("ag-old", ("uuid", "disk"), online=False, revoked=True)], "auto", "ag-old",
         "revoked"),
        ([Candidate("ag-old", ("uuid", "disk"), online=True)], "propose", None, "is online"),
        ([Candidate("ag-b", ("disk",), online=False)], "propose", None, "ag-b shares disk"),
        ([Candidate("ag-a", ("uuid", "disk"), online=False),
          Candidate("ag-b", ("uuid", "disk"), online=False)], "propose", None, "several"),
        ([Candidate("ag-a", ("uuid", "disk"), online=False),
          Candidate("ag-b", ("mac",), online=True)], "auto", "ag-a", "ag-a"),
        ([Candidate("ag-x", (), online=False)], "new", None, "no known machine"),
    ],
)
def test_link_decision(candidates, kind, machine, reason):
    link = link_decision(candidates)
    assert (link.kind, link.machine) == (kind, machine)
    assert reason in link.reason
