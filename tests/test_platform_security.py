"""The platform layer's security rules (issue 12, items 6 and 7), without Windows or systemd:
the pure rules are tested exhaustively, and the Windows branches run against a fake pywin32
that records what the real one would be asked to do."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from careline.agent import actions
from careline.agent import platform as osx
from careline.agent.state import AgentConfig, ProductConfig, StateDir
from careline.shared.errors import ConfigError

SYSTEM, ADMINS, USERS = osx.SYSTEM_SID, osx.ADMINISTRATORS_SID, "S-1-5-32-545"
ALLOWED, DENIED = 0, 1
FULL, READ_EXECUTE, WRITE_DATA, TRAVERSE = 0x1F01FF, 0x1200A9, 0x2, 0x20


# ----------------------------------------------------------------------------- pure rules
def test_private_windows_folder_has_no_problems():
    aces = [(ALLOWED, FULL, SYSTEM), (ALLOWED, FULL, ADMINS), (ALLOWED, FULL, osx.CREATOR_OWNER_SID)]
    assert osx.windows_acl_problems(SYSTEM, aces) == []
    assert osx.windows_acl_problems(ADMINS, aces) == []


@pytest.mark.parametrize("mask", [0x1, 0x2, 0x4, 0x10, 0x40, 0x100, 0x10000, 0x40000, 0x80000,
                                  0x10000000, 0x40000000, 0x80000000, FULL, READ_EXECUTE])
def test_any_read_or_write_right_for_another_principal_is_a_problem(mask):
    problems = osx.windows_acl_problems(SYSTEM, [(ALLOWED, FULL, SYSTEM), (ALLOWED, mask, USERS)])
    assert problems == [f"grants {USERS} access (mask {mask:#x})"]


def test_windows_owner_deny_entries_and_missing_dacl():
    assert osx.windows_acl_problems("S-1-5-21-1-2-3-1001", [(ALLOWED, FULL, SYSTEM)]) == [
        "owned by S-1-5-21-1-2-3-1001, not SYSTEM or Administrators"]
    assert osx.windows_acl_problems(SYSTEM, [(DENIED, FULL, USERS)]) == []  # deny only narrows
    assert osx.windows_acl_problems(SYSTEM, [(ALLOWED, TRAVERSE, USERS)]) == []
    assert "no access control list" in osx.windows_acl_problems(SYSTEM, None)[0]


def test_posix_dir_rules():
    assert osx.posix_dir_problems(1000, stat.S_IFDIR | 0o700, 1000) == []
    assert osx.posix_dir_problems(0, stat.S_IFDIR | 0o755, 1000) == []
    assert osx.posix_dir_problems(1001, stat.S_IFDIR | 0o700, 1000) == [
        "owned by uid 1001, not the agent's account (1000)"]
    for mode in (0o720, 0o702, 0o777):
        assert osx.posix_dir_problems(1000, stat.S_IFDIR | mode, 1000) == [
            f"writable by group or others (mode {mode:o})"]


def test_unsafe_path_entry():
    d, f = stat.S_IFDIR, stat.S_IFREG
    safe = [("/opt/kt/kt", 0, f | 0o755), ("/opt/kt", 0, d | 0o755), ("/opt", 0, d | 0o755)]
    assert osx.unsafe_path_entry(safe) is None
    assert osx.unsafe_path_entry([("/opt/kt/kt", 0, f | 0o775), *safe[1:]]) == (
        "/opt/kt/kt is writable by group or others")
    assert osx.unsafe_path_entry([safe[0], ("/opt/kt", 1000, d | 0o755), safe[2]]) == (
        "/opt/kt is owned by uid 1000")
    sticky_tmp = ("/tmp", 0, d | 0o1777)
    assert osx.unsafe_path_entry([("/tmp/kt", 0, d | 0o755), sticky_tmp]) is None
    # A user's entry in /tmp, or a world-writable dir without the sticky bit, is not safe.
    assert osx.unsafe_path_entry([("/tmp/kt", 1000, d | 0o755), sticky_tmp]) is not None
    assert osx.unsafe_path_entry([("/srv/kt", 0, d | 0o755), ("/srv", 0, d | 0o777)]) == (
        "/srv is writable by group or others")
    link = ("/opt/venv/bin/python", 1000, stat.S_IFLNK | 0o777)  # judged by its dir
    assert osx.unsafe_path_entry([link, ("/opt/venv/bin", 0, d | 0o755)]) is None
    assert osx.unsafe_path_entry([link, ("/tmp", 0, d | 0o1777)]) is not None


# ----------------------------------------------------------------------------- POSIX, for real
def test_state_dir_is_created_private_and_a_writable_one_is_refused(tmp_path: Path):
    state = tmp_path / "state"
    osx.secure_state_dir(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    state.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by group or others"):
        osx.secure_state_dir(state)


# ----------------------------------------------------------------------------- Windows, faked
class FakeAcl:
    def __init__(self) -> None:
        self.aces: list[Any] = []

    def AddAccessAllowedAceEx(self, revision: int, flags: int, mask: int, sid: str) -> None:
        self.aces.append(((ALLOWED, flags), mask, sid))

    def GetAceCount(self) -> int:
        return len(self.aces)

    def GetAce(self, index: int) -> Any:
        return self.aces[index]


class FakeDescriptor:
    def __init__(self, owner: str = SYSTEM, dacl: FakeAcl | None = None) -> None:
        self.owner, self.dacl, self.control = owner, dacl, 0

    def SetSecurityDescriptorDacl(self, present: int, dacl: FakeAcl, defaulted: int) -> None:
        self.dacl = dacl

    def SetSecurityDescriptorControl(self, mask: int, bits: int) -> None:
        self.control |= bits

    def GetSecurityDescriptorOwner(self) -> str:
        return self.owner

    def GetSecurityDescriptorDacl(self) -> FakeAcl | None:
        return self.dacl


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeDescriptor]:
    """Pretend to be Windows: folders' security lives in the returned dict."""
    folders: dict[str, FakeDescriptor] = {}

    def create_directory(path: str, attributes: Any) -> None:
        os.mkdir(path)
        folders[path] = attributes.SECURITY_DESCRIPTOR

    attributes_type = type("SECURITY_ATTRIBUTES", (), {"SECURITY_DESCRIPTOR": None})
    security = types.SimpleNamespace(
        ACL=FakeAcl, SECURITY_DESCRIPTOR=FakeDescriptor, SECURITY_ATTRIBUTES=attributes_type,
        ACL_REVISION=2, OBJECT_INHERIT_ACE=1, CONTAINER_INHERIT_ACE=2, SE_DACL_PROTECTED=0x1000,
        SE_FILE_OBJECT=1, OWNER_SECURITY_INFORMATION=1, DACL_SECURITY_INFORMATION=4,
        ConvertStringSidToSid=lambda sid: sid, ConvertSidToStringSid=lambda sid: sid,
        GetNamedSecurityInfo=lambda path, kind, what: folders[path],
    )
    monkeypatch.setitem(sys.modules, "win32security", security)
    monkeypatch.setitem(sys.modules, "win32file", types.SimpleNamespace(CreateDirectory=create_directory))
    monkeypatch.setitem(sys.modules, "ntsecuritycon", types.SimpleNamespace(FILE_ALL_ACCESS=FULL))
    monkeypatch.setattr(osx, "IS_WINDOWS", True)
    return folders


def test_windows_state_dir_gets_an_explicit_protected_acl(tmp_path: Path, windows):
    state = tmp_path / "ProgramData" / "Careline" / "agent"
    osx.secure_state_dir(state)
    made = windows[str(state)]
    assert made.control & 0x1000  # protected: nothing inherited from ProgramData
    assert made.dacl is not None
    assert [(mask, sid, flags) for (_t, flags), mask, sid in made.dacl.aces] == [
        (FULL, SYSTEM, 3), (FULL, ADMINS, 3)]
    osx.secure_state_dir(state)  # the agent's own folder is accepted on the next start


def test_windows_refuses_a_folder_a_standard_user_made_or_can_write(tmp_path: Path, windows):
    state = tmp_path / "agent"
    state.mkdir()
    user_acl = FakeAcl()
    user_acl.AddAccessAllowedAceEx(2, 3, FULL, SYSTEM)
    user_acl.AddAccessAllowedAceEx(2, 3, FULL, "S-1-5-21-1-2-3-1001")
    windows[str(state)] = FakeDescriptor("S-1-5-21-1-2-3-1001", user_acl)
    with pytest.raises(ConfigError, match=r"owned by S-1-5-21-1-2-3-1001.*grants S-1-5-21"):
        osx.secure_state_dir(state)
    users_write = FakeAcl()
    users_write.AddAccessAllowedAceEx(2, 3, WRITE_DATA, USERS)
    windows[str(state)] = FakeDescriptor(ADMINS, users_write)
    with pytest.raises(ConfigError, match=f"grants {USERS}"):
        osx.secure_state_dir(state)
    windows[str(state)] = FakeDescriptor(ADMINS, None)
    with pytest.raises(ConfigError, match="no access control list"):
        osx.secure_state_dir(state)


# ----------------------------------------------------------------------------- restarting
@pytest.fixture
def product(tmp_path: Path) -> ProductConfig:
    install = tmp_path / "KeToan"
    install.mkdir()
    (install / "ketoan.py").write_text("import time; time.sleep(60)\n")
    return ProductConfig(name="KeToan", install_dir=str(install),
                         executable=[sys.executable, "ketoan.py"])


def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, **kw: calls.append(list(argv)))
    return calls


def test_service_products_restart_only_through_the_service_manager(monkeypatch, product, tmp_path):
    service = ProductConfig(name="KeToanSrv", install_dir=product.install_dir,
                            executable=product.executable, service="ketoan.service")
    ran: list[list[str]] = []

    def run(argv: list[str], **kw: Any) -> types.SimpleNamespace:
        ran.append(argv)
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    started = spawned(monkeypatch)
    monkeypatch.setattr(osx, "product_processes", lambda p: [])
    monkeypatch.setattr(actions, "RESTART_WAIT_SECONDS", 0.1)
    state = StateDir(tmp_path)
    actions.restart_product(AgentConfig("m1", 1, "wss://x", products=[service]), state, "KeToanSrv")
    assert ran == [["systemctl", "stop", "ketoan.service"], ["systemctl", "start", "ketoan.service"]]
    assert started == []  # never the executable, whatever rights the agent has
    monkeypatch.setattr(osx, "IS_WINDOWS", True)
    ran.clear()
    osx.start_product(service, tmp_path / "out.log")
    assert ran == [["sc", "start", "ketoan.service"]]


def test_root_agent_refuses_a_desktop_product_others_can_change(monkeypatch, product, tmp_path):
    monkeypatch.setattr(osx, "is_elevated", lambda: True)
    started = spawned(monkeypatch)
    Path(product.install_dir).chmod(0o777)  # e.g. installed where every user may write
    with pytest.raises(ConfigError, match=r"not starting KeToan as root: .*writable by group"):
        osx.start_product(product, tmp_path / "out.log")
    assert started == []
    if os.geteuid() == 0:  # root-owned files: started (tests here run as root)
        Path(product.install_dir).chmod(0o755)
        osx.start_product(product, tmp_path / "out.log")
        assert started
        assert started[0][-1].endswith("ketoan.py")


def test_elevated_windows_agent_starts_desktop_products_in_the_users_session(
    monkeypatch, product, tmp_path
):
    monkeypatch.setattr(osx, "IS_WINDOWS", True)
    monkeypatch.setattr(osx, "is_elevated", lambda: True)
    started = spawned(monkeypatch)
    created: list[tuple[Any, ...]] = []

    class PyWinError(Exception):
        pass

    sessions = {"active": 1}

    def query_token(session: int) -> str:
        if session != 1:
            raise PyWinError(1008, "WTSQueryUserToken", "no token")
        return "token-of-lan"

    startup_type = type("STARTUPINFO", (), {"lpDesktop": ""})
    fakes = {
        "pywintypes": types.SimpleNamespace(error=PyWinError),
        "win32con": types.SimpleNamespace(CREATE_NEW_PROCESS_GROUP=0x200,
                                          CREATE_UNICODE_ENVIRONMENT=0x400),
        "win32profile": types.SimpleNamespace(CreateEnvironmentBlock=lambda token, inherit: {}),
        "win32ts": types.SimpleNamespace(WTSGetActiveConsoleSessionId=lambda: sessions["active"],
                                         WTSQueryUserToken=query_token),
        "win32process": types.SimpleNamespace(STARTUPINFO=startup_type,
                                              CreateProcessAsUser=lambda *a: created.append(a)),
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    osx.start_product(product, tmp_path / "out.log")
    assert started == []  # never as SYSTEM
    token, _app, command_line, *_rest, cwd, startup = created[0]
    assert token == "token-of-lan"
    assert "ketoan.py" in command_line
    assert cwd == product.install_dir
    assert startup.lpDesktop == "winsta0\\default"
    sessions["active"] = 0xFFFFFFFF  # nobody logged on
    with pytest.raises(ConfigError, match="nobody is logged on"):
        osx.start_product(product, tmp_path / "out.log")
    assert len(created) == 1
