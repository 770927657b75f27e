"""agent.platform's hardware identity: the override for many agents on one host, the Linux
readers on this machine, and the Windows CIM answer parsed (PowerShell faked: no Windows
machine here)."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from careline.agent import platform as osx
from careline.shared.errors import ConfigError
from careline.shared.hardware import FIELDS, hashed, valid


def test_override_is_hashed_like_real_values(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"uuid": "4C4C4544-0042", "disk": "WD-1", "colour": "red"}
    monkeypatch.setenv(osx.HARDWARE_ENV, json.dumps(raw))
    assert osx.hardware_identity() == hashed(raw)
    for bad in ("not json", "[1, 2]"):
        monkeypatch.setenv(osx.HARDWARE_ENV, bad)
        with pytest.raises(ConfigError, match="JSON object"):
            osx.hardware_identity()


def test_this_machine_reports_hashes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(osx.HARDWARE_ENV, raising=False)
    identity = osx.hardware_identity()
    assert valid(identity)
    assert set(identity) <= set(FIELDS)
    assert identity == osx.hardware_identity()  # stable


def test_windows_cim_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = {"uuid": "4C4C4544-0042-3510-8051-B4C04F4B4E31", "serial": "5BQKN12",
              "disk": None}
    calls = []

    def run(argv: list[str], **kwargs: object) -> SimpleNamespace:
        calls.append(argv)
        return SimpleNamespace(returncode=0, stdout=json.dumps(answer))

    monkeypatch.setattr(subprocess, "run", run)
    assert osx._windows_hardware() == {"uuid": answer["uuid"], "serial": "5BQKN12",
                                       "disk": None}
    assert calls[0][0] == "powershell"
    assert "Win32_ComputerSystemProduct" in calls[0][-1]
    monkeypatch.setattr(subprocess, "run",
                        lambda argv, **kw: SimpleNamespace(returncode=1, stdout=""))
    assert osx._windows_hardware() == {"uuid": None, "serial": None, "disk": None}
