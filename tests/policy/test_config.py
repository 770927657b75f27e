from datetime import time, timedelta

import pytest

from careline.coordinator.policy.alerts import KINDS, AlertRule
from careline.coordinator.policy.config import ACTIONS, Situation, load_policy
from careline.shared.errors import ConfigError

DEFAULT = load_policy(None)


def vendor(tmp_path, text):
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path)


def test_defaults():
    assert DEFAULT.fees["onsite_reinstall"] == 500_000
    assert set(DEFAULT.fees) == set(ACTIONS)
    assert all(isinstance(fee, int) for fee in DEFAULT.fees.values())
    assert set(DEFAULT.tiers) == {"basic", "standard", "premium"}
    assert DEFAULT.tier("premium").waive_onsite_reinstall_fee
    assert not DEFAULT.warranty.waive_onsite_reinstall_fee
    assert DEFAULT.warranty.name == "warranty"
    assert DEFAULT.expiring_within_days == 30
    assert DEFAULT.same_day_cutoff == time(15)
    assert DEFAULT.calendar.timezone == "Asia/Ho_Chi_Minh"
    assert DEFAULT.calendar.workdays == frozenset(range(6))
    assert (DEFAULT.calendar.opens, DEFAULT.calendar.closes) == (time(8), time(17, 30))
    assert DEFAULT.offline_long_after == timedelta(hours=72)
    assert set(DEFAULT.alerts) == set(KINDS)
    assert DEFAULT.alerts["disk_full"] == AlertRule(open_after=2, close_after=3)
    assert DEFAULT.alerts["unclean_shutdown"] == AlertRule.event()
    assert [rule.index for rule in DEFAULT.rules] == list(range(len(DEFAULT.rules)))
    assert DEFAULT.rules[-1].when == {}


def test_unknown_tier_lookup():
    with pytest.raises(ConfigError, match=r"unknown tier 'gold'.*basic, premium, standard"):
        DEFAULT.tier("gold")


def test_vendor_file_merges_over_defaults(tmp_path):
    policy = vendor(
        tmp_path,
        """
        [fees]
        onsite_reinstall_vnd = 450_000
        [tiers.gold]
        remote_fixes = true
        regulation_updates = true
        bug_fixes = true
        onsite_visits_per_year = 12
        waive_onsite_reinstall_fee = true
        [tiers.basic]
        remote_fixes = true
        [due]
        workdays = ["mon", "tue", "wed", "thu", "fri"]
        timezone = "Asia/Bangkok"
        """,
    )
    assert policy.fees["onsite_reinstall"] == 450_000
    assert policy.fees["technician_visit"] == DEFAULT.fees["technician_visit"]
    assert policy.tier("gold").onsite_visits_per_year == 12
    assert policy.tier("basic").remote_fixes  # one key changed ...
    assert policy.tier("basic").regulation_updates  # ... the rest kept
    assert policy.calendar.workdays == frozenset(range(5))  # arrays are replaced
    assert policy.calendar.timezone == "Asia/Bangkok"
    assert policy.rules == DEFAULT.rules


def test_vendor_rules_replace_the_whole_list(tmp_path):
    policy = vendor(
        tmp_path,
        """
        [[rules]]
        category = ["virus", "power", "disk"]
        severity = "critical"
        covered = false
        action = "technician_visit"
        due = "same_day"
        reason = "Uncovered critical hardware/virus problem: send someone"

        [[rules]]
        action = "remote_guidance"
        due = "business_days:2"
        reason = "Otherwise call the customer"
        """,
    )
    assert len(policy.rules) == 2
    first = policy.rules[0]
    assert first.when == {
        "category": frozenset({"virus", "power", "disk"}),
        "severity": frozenset({"critical"}),
        "covered": False,
    }
    hit = Situation("disk", "critical", True, False, False, False, covered=False)
    assert policy.first_rule(hit) is first
    assert policy.first_rule(Situation("disk", "critical", True, False, False, False, True)).index
    assert policy.rules[1].due.business_days == 2


RULE_TAIL = '\naction = "remote_guidance"\ndue = "same_day"\nreason = "r"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fees]\nonsite_reinstal_vnd = 1", r"unknown key\(s\): fees\.onsite_reinstal_vnd"),
        ("[fees]\nonsite_reinstall_vnd = -1", r"fees\.onsite_reinstall_vnd must be an integer"),
        ("[fees]\nonsite_reinstall_vnd = 1.5", r"fees\.onsite_reinstall_vnd must be an integer"),
        ("[fees]\nonsite_reinstall_vnd = true", r"fees\.onsite_reinstall_vnd must be an integer"),
        ("fees = 3", "fees must be a table"),
        ("[warranty]\nremote_fixes = 1", r"warranty\.remote_fixes must be true or false"),
        ("[warranty]\ncolour = 'red'", r"unknown key\(s\): warranty\.colour"),
        ("[tiers.gold]\nremote_fixes = true", r"tiers\.gold\.regulation_updates is missing"),
        (
            "[tiers.warranty]\nremote_fixes = true\nregulation_updates = true\nbug_fixes = true\n"
            "onsite_visits_per_year = 0\nwaive_onsite_reinstall_fee = true",
            r"tiers\.warranty: this tier name is reserved",
        ),
        ("[entitlement]\nexpiring_within_days = 'soon'", r"entitlement\.expiring_within_days"),
        ("[due]\nsame_day_cutoff = '3pm'", r"due\.same_day_cutoff must be a time 'HH:MM'"),
        ("[due]\nopens = '25:00'", r"due\.opens must be a time"),
        ("[due]\nopens = '18:00'", r"due: business hours must open before they close"),
        ("[due]\ntimezone = 'Mars/Olympus'", r"due: unknown time zone 'Mars/Olympus'"),
        ("[due]\ncountry = 'XX'", r"due: no public holiday calendar for country 'XX'"),
        ("[due]\nworkdays = ['monday']", r"due\.workdays must be a list of mon, tue"),
        ("[machine]\noffline_long_after_hours = 0", r"machine\.offline_long_after_hours"),
        ("[machine]\noffline_incident_after_minutes = 0",
         r"machine\.offline_incident_after_minutes must be a number > 0"),
        ("[kinds.disk_full]\ncategory = 'hardware'", r"kinds\.disk_full\.category: unknown value"),
        ("[kinds.disk_full]\nseverity = 'urgent'", r"kinds\.disk_full\.severity: unknown value"),
        ("[kinds.meteor]\ncategory = 'other'", r"unknown key\(s\): kinds\.meteor"),
        ("[alerts.disk_ful]\nopen_after = 1", r"unknown key\(s\): alerts\.disk_ful"),
        ("[alerts.disk_full]\nopen_after = 0", r"alerts\.disk_full\.open_after must be"),
        ("[alerts.unclean_shutdown]\nopen_after = 1", r"unknown key\(s\): alerts\.unclean"),
        ("[alerts.disk_full]\none_shot = true", r"unknown key\(s\): alerts\.disk_full\.one_shot"),
        ("[[rules]]\ncategory = 'viruses'" + RULE_TAIL, r"rules\[0\]\.category: unknown value"),
        ("[[rules]]\nseverity = ['high', 'urgent']" + RULE_TAIL, r"rules\[0\]\.severity: unknown"),
        ("[[rules]]\nseverity = []" + RULE_TAIL, r"rules\[0\]\.severity must be a string or"),
        ("[[rules]]\nonline = 'yes'" + RULE_TAIL, r"rules\[0\]\.online must be true or false"),
        ("[[rules]]\nweather = 'rain'" + RULE_TAIL, r"unknown key\(s\): rules\[0\]\.weather"),
        (
            "[[rules]]\naction = 'reboot'\ndue = 'same_day'\nreason = 'r'",
            r"rules\[0\]\.action: unknown value 'reboot'",
        ),
        (
            "[[rules]]\naction = 'remote_update'\ndue = 'soon'\nreason = 'r'",
            r"rules\[0\]\.due: due must be",
        ),
        ("[[rules]]\naction = 'remote_update'\ndue = 'same_day'", r"rules\[0\]\.reason is missing"),
        ("[[rules]]\ncategory = 'bug'" + RULE_TAIL, r"rules\[0\] is the last rule"),
        ("rules = []", "rules must be a non-empty array"),
        ("[[rules]]\n" + RULE_TAIL + "\n[[rules]]\ncovered = true" + RULE_TAIL, r"rules\[1\] is"),
        ("[surprise]\nx = 1", r"unknown key\(s\): surprise"),
    ],
)
def test_invalid_vendor_files_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        vendor(tmp_path, text)
    assert str(info.value).startswith(f"policy file {tmp_path / 'policy.toml'}: ")


def test_unreadable_or_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        vendor(tmp_path, "[fees\n")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(bad)


def test_every_reported_kind_is_classified_and_offline_threshold_is_fractional(tmp_path):
    policy = load_policy()
    assert set(policy.kinds) == set(KINDS)
    assert policy.kinds["integrity_mismatch"] == ("virus", "high")
    assert policy.kinds["regulation_deadline"] == ("regulation", "high")
    vendor = tmp_path / "vendor.toml"
    vendor.write_text("[machine]\noffline_incident_after_minutes = 0.5\n")
    assert load_policy(vendor).offline_incident_after == timedelta(seconds=30)
