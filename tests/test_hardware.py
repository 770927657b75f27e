"""shared.hardware: what leaves the PC is a salted hash, and placeholders identify nothing."""

import hashlib

import pytest

from careline.shared.hardware import hashed, valid


def test_fields_are_normalised_then_hashed():
    one = hashed({"uuid": "4C4C4544-0042-3510-8051-B4C04F4B4E31", "serial": " 5BQKN12 ",
                  "disk": "WD-WCC4N1234567", "mac": "00:1A:2B:3C:4D:5E", "color": "red"})
    same = hashed({"uuid": "4c4c45440042351080 51b4c04f4b4e31".replace(" ", ""),
                   "serial": "5bqkn12", "disk": "wd-wcc4n1234567", "mac": "00-1a-2b-3c-4d-5e"})
    assert one == same
    assert set(one) == {"uuid", "serial", "disk", "mac"}
    assert one["serial"] == hashlib.sha256(b"careline-hw\0serial\x005bqkn12").hexdigest()
    assert "5bqkn12" not in str(one).lower()
    assert valid(one)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("uuid", "00000000-0000-0000-0000-000000000000"),
        ("uuid", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
        ("serial", "To Be Filled By O.E.M."),
        ("serial", "Default string"),
        ("serial", "System Serial Number"),
        ("disk", "   "),
        ("mac", "00:00:00:00:00:00"),
    ],
)
def test_placeholders_are_dropped(field, value):
    assert hashed({field: value}) == {}


def test_valid_refuses_unknown_fields_and_raw_values():
    assert valid({})
    assert not valid({"uuid": "4C4C4544-0042-3510-8051-B4C04F4B4E31"})
    assert not valid({"colour": "0" * 64})
