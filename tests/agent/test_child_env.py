"""platform.child_env: programs started by the self-contained agent get the system's
libraries and none of the PyInstaller bootloader's variables."""

from __future__ import annotations

import sys

import pytest

from careline.agent.platform import child_env


def test_inherits_when_not_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert child_env() is None


def test_frozen_restores_library_path_and_drops_bootloader_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/tmp/_MEI123")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/usr/local/lib")
    monkeypatch.setenv("_PYI_APPLICATION_HOME_DIR", "/tmp/_MEI123")
    monkeypatch.setenv("_PYI_PARENT_PROCESS_LEVEL", "1")
    monkeypatch.setenv("KEEP_ME", "yes")
    env = child_env()
    assert env is not None
    assert env["LD_LIBRARY_PATH"] == "/usr/local/lib"
    assert "LD_LIBRARY_PATH_ORIG" not in env
    assert not [k for k in env if k.startswith("_PYI_")]
    assert env["KEEP_ME"] == "yes"
    monkeypatch.delenv("LD_LIBRARY_PATH_ORIG")
    assert "LD_LIBRARY_PATH" not in (child_env() or {})
