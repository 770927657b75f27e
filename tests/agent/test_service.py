"""The agent as a service: the unit file and spec (pure), the systemd and Windows service
managers driven with fakes of systemctl and pywin32, and admin checks."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from careline.agent import platform as osx
from careline.agent.entry import EXIT_NOT_ADMIN, EXIT_REFUSED, EXIT_UNREACHABLE, exit_code
from careline.agent.service import (
    SERVICE_NAME,
    ServiceSpec,
    agent_command,
    service_spec,
    systemd_quote,
    systemd_unit,
)
from careline.agent.state import AgentConfig, ProductConfig, StateDir
from careline.shared.errors import AuthError, ConfigError, PermissionDenied, Unreachable

STATE = StateDir(Path("/var/lib/careline-agent"))
CONFIG = AgentConfig(agent_id="ag-x", customer_id=1, server_url="wss://h:8443", products=[
    ProductConfig(name="KeToan", install_dir="/opt/Ke Toan/app"),
    ProductConfig(name="Luong", install_dir="/opt/Ke Toan/luong"),
])


def test_command_for_python_and_for_the_self_contained_build() -> None:
    assert agent_command(Path("/s"), executable="/usr/bin/python3", frozen=False) == [
        "/usr/bin/python3", "-m", "careline.agent", "run", "--state", "/s"]
    assert agent_command(Path("/s"), executable="/opt/careline/careline-agent", frozen=True,
                         verb="service-host") == [
        "/opt/careline/careline-agent", "service-host", "--state", "/s"]


def test_spec_makes_state_product_folders_and_own_install_writable() -> None:
    spec = service_spec(STATE, CONFIG, executable="/opt/careline/careline-agent", frozen=True)
    assert spec.writable == ["/var/lib/careline-agent", "/opt/Ke Toan", "/opt/careline"]
    assert spec.command[0] == "/opt/careline/careline-agent"


@pytest.mark.parametrize(("word", "quoted"), [
    ("/usr/bin/python3", "/usr/bin/python3"),
    ("-/opt/Ke Toan", '"-/opt/Ke Toan"'),
    ("50%", "50%%"),
    ("$HOME", '"$$HOME"'),
    ('a"b\\c', '"a\\"b\\\\c"'),
])
def test_systemd_quote(word: str, quoted: str) -> None:
    assert systemd_quote(word) == quoted


def test_unit_restarts_on_failure_but_not_when_refused_and_is_sandboxed() -> None:
    unit = systemd_unit(service_spec(STATE, CONFIG))
    assert "Restart=on-failure" in unit
    assert f"RestartPreventExitStatus={EXIT_REFUSED}" in unit
    for line in ("NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict", "KillMode=process",
                 'ReadWritePaths="-/opt/Ke Toan"', "ReadWritePaths=-/var/lib/careline-agent"):
        assert line in unit.splitlines()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing (scripts/test.sh installs the systemd package)")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    odd = tmp_path / "state with space and 100%"
    spec = service_spec(StateDir(odd), CONFIG)
    unit = tmp_path / f"{SERVICE_NAME}.service"
    unit.write_text(systemd_unit(spec))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert SERVICE_NAME not in result.stderr  # no warnings about our unit either
    # and the check is real: a broken unit fails it
    unit.write_text(systemd_unit(ServiceSpec(SERVICE_NAME, ["relative/python", "run"], "/s", [])))
    assert subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True).returncode != 0


class FakeSystemctl:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.answer = ""

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        return self.answer


def test_systemd_install_status_uninstall(tmp_path: Path) -> None:
    fake = FakeSystemctl()
    manager = osx.SystemdServices(tmp_path, run=fake, systemctl=["/x/systemctl"])
    assert manager.status(SERVICE_NAME) == {"installed": "no", "state": "not installed"}
    spec = service_spec(STATE, CONFIG)
    manager.install(spec)
    assert (tmp_path / "careline-agent.service").read_text() == systemd_unit(spec)
    assert (tmp_path / "careline-agent.service").stat().st_mode & 0o777 == 0o644
    manager.start(SERVICE_NAME)
    fake.answer = "ActiveState=active\nSubState=running\nUnitFileState=enabled\n"
    assert manager.status(SERVICE_NAME) == {"installed": "yes", "state": "active",
                                            "detail": "running", "enabled": "enabled"}
    manager.stop(SERVICE_NAME)
    manager.uninstall(SERVICE_NAME)
    assert not (tmp_path / "careline-agent.service").exists()
    assert [c[1:] for c in fake.calls] == [
        ["daemon-reload"], ["enable", "careline-agent.service"], ["start", "careline-agent.service"],
        ["show", "-p", "ActiveState,SubState,UnitFileState", "careline-agent.service"],
        ["stop", "careline-agent.service"], ["disable", "--now", "careline-agent.service"],
        ["daemon-reload"]]
    assert {c[0] for c in fake.calls} == {"/x/systemctl"}
    with pytest.raises(ConfigError, match="not installed"):
        manager.uninstall(SERVICE_NAME)


class FakeWin32:
    """The parts of pywin32's win32serviceutil and win32service the agent uses."""

    SERVICE_AUTO_START, SC_MANAGER_ALL_ACCESS, SERVICE_ALL_ACCESS = 2, 0xF003F, 0xF01FF
    SERVICE_CONFIG_FAILURE_ACTIONS, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG = 2, 4
    SERVICE_STOP_PENDING = 3

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.installed: dict[str, int] = {}

    def InstallService(self, cls: Any, name: str, display: str, **kw: Any) -> None:
        self.calls.append(("InstallService", cls, name, display, kw))
        self.installed[name] = 1

    def OpenSCManager(self, *args: Any) -> str:
        return "scm"

    def OpenService(self, scm: str, name: str, access: int) -> str:
        return f"handle:{name}"

    def ChangeServiceConfig2(self, handle: str, level: int, info: Any) -> None:
        self.calls.append(("ChangeServiceConfig2", handle, level, info))

    def CloseServiceHandle(self, handle: str) -> None:
        self.calls.append(("Close", handle))

    def StartService(self, name: str) -> None:
        self.installed[name] = 4

    def StopService(self, name: str) -> None:
        if name not in self.installed:
            raise OSError(1060, "The specified service does not exist")
        self.installed[name] = 1

    def RemoveService(self, name: str) -> None:
        del self.installed[name]

    def QueryServiceStatus(self, name: str) -> tuple[int, int]:
        if name not in self.installed:
            raise OSError(1060, "The specified service does not exist")
        return (16, self.installed[name])


def test_windows_service_install_with_recovery_and_control() -> None:
    win = FakeWin32()
    manager = osx.WindowsServices(win, win)
    spec = service_spec(StateDir(Path(r"C:\ProgramData\Careline\agent")), CONFIG,
                        executable=r"C:\Program Files\Careline\careline-agent.exe", frozen=True,
                        verb="service-host")
    manager.install(spec)
    name, cls, svc, _display, kw = win.calls[0]
    assert (name, cls, svc) == ("InstallService", None, "careline-agent")
    assert kw["exeName"] == r"C:\Program Files\Careline\careline-agent.exe"
    assert kw["exeArgs"] == r'service-host --state C:\ProgramData\Careline\agent'
    assert kw["startType"] == win.SERVICE_AUTO_START
    failure = next(c for c in win.calls if c[0] == "ChangeServiceConfig2" and c[2] == 2)[3]
    assert failure["Actions"] == [(1, 5000), (1, 30000), (1, 60000)]
    assert ("ChangeServiceConfig2", "handle:careline-agent", 4, True) in win.calls
    assert ("Close", "handle:careline-agent") in win.calls
    assert ("Close", "scm") in win.calls
    assert manager.status(SERVICE_NAME) == {"installed": "yes", "state": "stopped"}
    manager.start(SERVICE_NAME)
    assert manager.status(SERVICE_NAME)["state"] == "running"
    manager.stop(SERVICE_NAME)
    manager.uninstall(SERVICE_NAME)
    assert manager.status(SERVICE_NAME) == {"installed": "no", "state": "not installed"}


class FakeFramework:
    """pywin32's ServiceFramework: remembers reported states."""

    def __init__(self, args: Any) -> None:
        self.reported: list[int] = []

    def ReportServiceStatus(self, state: int) -> None:
        self.reported.append(state)


def test_windows_service_class_runs_the_agent_until_the_service_manager_stops_it() -> None:
    import threading

    util = type("util", (), {"ServiceFramework": FakeFramework})
    stopped = threading.Event()
    handed: list[Any] = []

    def run(on_start: Callable[[Callable[[], None]], None]) -> int:  # as entry.run_agent does
        on_start(stopped.set)
        handed.append(True)
        stopped.wait(10)
        return 0

    cls = osx.windows_service_class(util, FakeWin32, run)
    service = cls(["careline-agent"])
    thread = threading.Thread(target=service.SvcDoRun)
    thread.start()
    while not handed:
        threading.Event().wait(0.01)
    service.SvcStop()
    thread.join(10)
    assert not thread.is_alive()
    assert service.reported == [FakeWin32.SERVICE_STOP_PENDING]
    # a stop that comes before the agent is up still stops it at once
    early = cls(["careline-agent"])
    early.SvcStop()
    stopped.clear()
    early.SvcDoRun()
    assert stopped.is_set()


def test_admin_required_and_exit_codes() -> None:
    with pytest.raises(PermissionDenied, match=r"root|Administrator"):
        osx.require_admin(lambda: False)
    osx.require_admin(lambda: True)
    assert exit_code(PermissionDenied("x")) == EXIT_NOT_ADMIN
    assert exit_code(AuthError("x")) == EXIT_REFUSED
    assert exit_code(Unreachable("x")) == EXIT_UNREACHABLE
    assert exit_code(ConfigError("x")) == 1


def test_service_host_argv_goes_to_the_windows_host_not_click() -> None:
    from careline.agent.entry import parse_run_argv

    assert parse_run_argv(["service-host", "--state", "C:/s"], "service-host") == ("C:/s", False)


def test_windows_service_exits_for_a_restart_after_a_self_update() -> None:
    """A non-zero result of the agent (EXIT_RESTART after a self-update's switch) ends the
    process without reporting "stopped", so the recovery actions start the new program."""
    from careline.agent.entry import EXIT_RESTART

    util = type("util", (), {"ServiceFramework": FakeFramework})
    exits: list[int] = []
    cls = osx.windows_service_class(util, FakeWin32, lambda on_start: EXIT_RESTART, exits.append)
    cls(["careline-agent"]).SvcDoRun()
    assert exits == [EXIT_RESTART]
    clean = osx.windows_service_class(util, FakeWin32, lambda on_start: 0, exits.append)
    clean(["careline-agent"]).SvcDoRun()
    assert exits == [EXIT_RESTART]


def test_program_path_and_launcher_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service runs the agent's own program when it has one (a launcher or console
    script named careline-agent...), which is also what a self-update replaces."""
    import sys

    from careline.agent.service import program_path

    launcher = tmp_path / "careline-agent"
    launcher.write_text("#!/bin/sh\n")
    monkeypatch.delattr(sys, "frozen", raising=False)
    monkeypatch.setattr(sys, "argv", [str(launcher), "enroll"])
    assert program_path() == launcher.resolve()
    monkeypatch.setattr(sys, "argv", ["/x/careline/agent/__main__.py", "enroll"])
    assert program_path() is None  # python -m careline.agent: updated with pip
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert program_path() == Path(sys.executable)
    spec = service_spec(STATE, CONFIG, frozen=False, program=launcher)
    assert spec.command == [str(launcher), "run", "--state", "/var/lib/careline-agent"]
    assert str(tmp_path) in spec.writable
