"""careline.toml (issue 13, item 11): written by a TOML library, read with validation that
names the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from careline.coordinator.datadir import DataDir, Settings
from careline.shared.errors import ConfigError


def test_windows_paths_survive_a_round_trip(tmp_path: Path) -> None:
    datadir = DataDir(tmp_path)
    settings = Settings(policy="C:\\Vendor\\Careline\\policy.toml",
                        database="sqlite:///C:\\ProgramData\\Careline\\careline.db",
                        public_url='wss://"odd".example:8443', heartbeat_interval=12.5)
    datadir.write_settings(settings)
    assert datadir.settings() == settings


@pytest.mark.parametrize(("text", "named"), [
    ('heartbeat_interval = "30"\n', "heartbeat_interval"),
    ("heartbeat_intervall = 30\n", "heartbeat_intervall"),
    ("missed_heartbeats = 0\n", "missed_heartbeats"),
    ("listen = 8443\n", "listen"),
    ("listen = \n", "careline.toml"),  # not TOML at all: the file is named
])
def test_a_bad_setting_is_named(tmp_path: Path, text: str, named: str) -> None:
    datadir = DataDir(tmp_path)
    datadir.settings_file.write_text(text)
    with pytest.raises(ConfigError, match=named):
        datadir.settings()


def test_overrides_apply_over_the_file(tmp_path: Path) -> None:
    datadir = DataDir(tmp_path)
    datadir.write_settings(Settings(listen="0.0.0.0:8443"))
    assert datadir.settings(listen="127.0.0.1:9000", database=None).listen == "127.0.0.1:9000"
