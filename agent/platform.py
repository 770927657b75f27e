"""Everything that differs between Windows and Linux, in one place.

Paths, who may touch the state dir, how a product's processes are found, and how a product
is stopped and started. The rest of the agent calls these functions and never tests the OS
itself. pywin32 is imported only inside the Windows branches.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from careline.agent.service import DESCRIPTION as SERVICE_DESCRIPTION
from careline.agent.service import SERVICE_NAME, ServiceSpec, systemd_unit
from careline.agent.state import ProductConfig
from careline.shared.errors import ConfigError, PermissionDenied
from careline.shared.files import write_file_atomic

IS_WINDOWS = sys.platform == "win32"


def default_state_dir() -> Path:
    if IS_WINDOWS:
        base = os.environ.get("PROGRAMDATA", r"C:\ProgramData")
        return Path(base) / "Careline" / "agent"
    if os.geteuid() == 0:
        return Path("/var/lib/careline-agent")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "careline-agent"


def child_env() -> dict[str, str] | None:
    """The environment for programs the agent starts (products, systemctl, smartctl, checks).

    None (inherit) normally. In the self-contained build the PyInstaller bootloader points
    LD_LIBRARY_PATH at its bundled libraries and sets _PYI_* variables; a system program
    would load the wrong libraries, and another copy of the agent would look for a deleted
    extraction folder. So those are undone (bootloader keeps the original as *_ORIG).
    """
    if not getattr(sys, "frozen", False):
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_PYI_", "_MEIPASS"))}
    for name in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
        original = env.pop(f"{name}_ORIG", None)
        if original is not None:
            env[name] = original
        else:
            env.pop(name, None)
    return env


# ----------------------------------------------------------------------------- state dir
# Principals that may own or write the state dir on Windows: SYSTEM, Administrators,
# TrustedInstaller, and CREATOR OWNER (stands for whoever creates a child, who must
# already be one of the others to create anything).
SYSTEM_SID, ADMINISTRATORS_SID, CREATOR_OWNER_SID = "S-1-5-18", "S-1-5-32-544", "S-1-3-0"
TRUSTED_SIDS = frozenset({
    SYSTEM_SID, ADMINISTRATORS_SID, CREATOR_OWNER_SID,
    "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464",  # TrustedInstaller
})
ACCESS_ALLOWED_ACE_TYPE = 0
# Rights that let a principal read the agent's key or change what the agent trusts:
# read/write/append data, write EA/attributes, delete child, DELETE, WRITE_DAC,
# WRITE_OWNER, GENERIC_ALL/WRITE/READ.
_SENSITIVE_RIGHTS = (0x1 | 0x2 | 0x4 | 0x10 | 0x40 | 0x100 | 0x10000 | 0x40000 | 0x80000
                     | 0x10000000 | 0x40000000 | 0x80000000)


def windows_acl_problems(owner: str, aces: list[tuple[int, int, str]] | None) -> list[str]:
    """Why a Windows folder (owner SID, DACL as (ace type, access mask, SID); None = no
    DACL, open to everyone) is not private to SYSTEM and Administrators. Pure: tested
    exhaustively without Windows."""
    problems = []
    if owner not in TRUSTED_SIDS:
        problems.append(f"owned by {owner}, not SYSTEM or Administrators")
    if aces is None:
        problems.append("has no access control list (everyone has full access)")
        return problems
    for ace_type, mask, sid in aces:
        if ace_type == ACCESS_ALLOWED_ACE_TYPE and sid not in TRUSTED_SIDS and mask & _SENSITIVE_RIGHTS:
            problems.append(f"grants {sid} access (mask {mask:#x})")
    return problems


def posix_dir_problems(uid: int, mode: int, agent_uid: int) -> list[str]:
    """Why a POSIX folder (owner uid, st_mode) is not private to the agent's account."""
    problems = []
    if uid not in (agent_uid, 0):
        problems.append(f"owned by uid {uid}, not the agent's account ({agent_uid})")
    if mode & 0o022:
        problems.append(f"writable by group or others (mode {mode & 0o777:o})")
    return problems


def secure_state_dir(path: Path) -> None:
    """Create the state dir private to the agent's kind (Windows: an explicit ACL for SYSTEM
    and Administrators; POSIX: 0700), or refuse an existing one that someone else owns or
    can write: `mkdir(mode=...)` is no ACL on Windows, and a folder a standard user made
    beforehand would let them swap the agent's keys or trust anchors."""
    if IS_WINDOWS:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _windows_create_private_dir(path)
        problems = windows_acl_problems(*_windows_dir_security(path))
    else:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
        problems = posix_dir_problems(st.st_uid, st.st_mode, os.geteuid())
    if problems:
        fix = (f'icacls "{path}" /setowner *S-1-5-32-544 /T && icacls "{path}" /inheritance:r '
               "/grant:r *S-1-5-18:(OI)(CI)F *S-1-5-32-544:(OI)(CI)F" if IS_WINDOWS
               else f"chown {os.geteuid()} {path} && chmod 700 {path}")
        raise ConfigError(f"refusing the state dir {path}: {'; '.join(problems)}. If its "
                          f"contents are trusted, an administrator can fix it with: {fix}")


def _windows_create_private_dir(path: Path) -> None:
    """Create `path` with a protected DACL: full control for SYSTEM and Administrators,
    inherited by everything inside, nothing inherited from the parent (ProgramData lets
    Users read and create)."""
    import ntsecuritycon
    import win32file
    import win32security

    dacl = win32security.ACL()
    inherit = win32security.OBJECT_INHERIT_ACE | win32security.CONTAINER_INHERIT_ACE
    for sid in (SYSTEM_SID, ADMINISTRATORS_SID):
        dacl.AddAccessAllowedAceEx(win32security.ACL_REVISION, inherit,
                                   ntsecuritycon.FILE_ALL_ACCESS,
                                   win32security.ConvertStringSidToSid(sid))
    descriptor = win32security.SECURITY_DESCRIPTOR()
    descriptor.SetSecurityDescriptorDacl(1, dacl, 0)
    descriptor.SetSecurityDescriptorControl(win32security.SE_DACL_PROTECTED,
                                            win32security.SE_DACL_PROTECTED)
    attributes = win32security.SECURITY_ATTRIBUTES()
    attributes.SECURITY_DESCRIPTOR = descriptor
    win32file.CreateDirectory(str(path), attributes)


def _windows_dir_security(path: Path) -> tuple[str, list[tuple[int, int, str]] | None]:
    """The folder's owner SID and DACL entries as strings and numbers."""
    import win32security

    descriptor = win32security.GetNamedSecurityInfo(
        str(path), win32security.SE_FILE_OBJECT,
        win32security.OWNER_SECURITY_INFORMATION | win32security.DACL_SECURITY_INFORMATION)
    owner = win32security.ConvertSidToStringSid(descriptor.GetSecurityDescriptorOwner())
    dacl = descriptor.GetSecurityDescriptorDacl()
    if dacl is None:
        return owner, None
    aces = []
    for index in range(dacl.GetAceCount()):
        ace = dacl.GetAce(index)  # ((type, flags), mask, [object types...], sid)
        aces.append((ace[0][0], ace[1], win32security.ConvertSidToStringSid(ace[-1])))
    return owner, aces


def os_description() -> str:
    return f"{platform.system()} {platform.release()} ({platform.machine()})"


def disk_mounts() -> list[str]:
    """Local fixed disks worth reporting (no pseudo, network or snap loop filesystems)."""
    mounts = []
    for part in psutil.disk_partitions(all=False):
        if IS_WINDOWS and "cdrom" in part.opts:
            continue
        if not IS_WINDOWS and (part.device.startswith("/dev/loop") or part.fstype == "squashfs"):
            continue
        mounts.append(part.mountpoint)
    return mounts or [os.path.abspath(os.sep)]


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def product_processes(product: ProductConfig) -> list[psutil.Process]:
    """Processes whose executable or script lives in the product's install dir."""
    root = _norm(product.install_dir) + os.sep
    found = []
    for proc in psutil.process_iter(["exe", "cmdline"]):
        try:
            candidates = [proc.info["exe"] or "", *(proc.info["cmdline"] or [])[:2]]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c and os.path.isabs(c) and _norm(c).startswith(root) for c in candidates):
            found.append(proc)
    return found


def stop_product(product: ProductConfig, timeout: float = 10.0) -> None:
    if product.service:
        _service(product.service, "stop")
        return
    procs = product_processes(product)
    for proc in procs:
        proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        proc.kill()


def is_elevated() -> bool:
    """Root, or on Windows SYSTEM or an elevated administrator."""
    if IS_WINDOWS:
        import ctypes

        return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]
    return os.geteuid() == 0


def start_product(product: ProductConfig, log_path: Path) -> None:
    """Start a product again: a service through its service manager; a desktop program
    never with the agent's rights over files a standard user could swap. An elevated agent
    starts it in the logged-on user's session on Windows (a program started from the
    service would run as SYSTEM in session 0, invisible), and on Linux only from paths
    that root alone can change; otherwise it refuses, saying why (`check_startable`)."""
    if product.service:
        _service(product.service, "start")
        return
    argv, install_dir = check_startable(product)
    if is_elevated() and IS_WINDOWS:
        _windows_start_in_user_session(product.name, argv, install_dir)
        return
    # Detached, so the product outlives the agent like a program the user started.
    flags = 0
    if IS_WINDOWS:
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    with open(log_path, "ab") as log:
        subprocess.Popen(
            argv, cwd=install_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            creationflags=flags, start_new_session=not IS_WINDOWS, env=child_env(),
        )


def check_startable(product: ProductConfig) -> tuple[list[str], Path]:
    """Raise ConfigError, with the reason, if `start_product` would refuse this product;
    else its argv and install dir. Called before a restart stops anything."""
    if product.service:
        return [], Path(product.install_dir)
    if not product.executable:
        raise ConfigError(
            f"product {product.name} has no executable or service configured to start it"
        )
    install_dir = Path(product.install_dir)
    # Paths relative to the install dir become absolute, so the process is found there later.
    argv = [
        str(install_dir / arg) if not os.path.isabs(arg) and (install_dir / arg).exists() else arg
        for arg in product.executable
    ]
    if not is_elevated():
        return argv, install_dir
    if IS_WINDOWS:
        _windows_console_user_token(product.name)
        return argv, install_dir
    for path in [install_dir, *(Path(a) for a in argv if os.path.isabs(a) and os.path.exists(a))]:
        problem = changeable_by_others(path)
        if problem:
            raise ConfigError(
                f"not starting {product.name} as root: {problem}, so a standard user could "
                "replace what it runs. Configure it as a service (--product-service), make "
                "its files root-only, or ask the user to start it.")
    return argv, install_dir


def unsafe_path_entry(chain: list[tuple[str, int, int]]) -> str | None:
    """Pure: given a path and its parents from the leaf up as (path, owner uid, st_mode),
    why an account other than root could change what the leaf is, or None. A world-writable
    sticky dir (/tmp) is fine when the entry below it is root's. A symlink cannot be
    changed, only replaced through its dir (checked next)."""
    for index, (path, uid, mode) in enumerate(chain):
        if stat.S_ISLNK(mode):
            continue
        if uid != 0:
            return f"{path} is owned by uid {uid}"
        if mode & 0o022:
            below_is_roots = index > 0 and chain[index - 1][1] == 0
            if not (stat.S_ISDIR(mode) and mode & stat.S_ISVTX and below_is_roots):
                return f"{path} is writable by group or others"
    return None


def changeable_by_others(path: Path) -> str | None:
    """POSIX: why a non-root account could change `path` (the path as given, and where its
    symlinks lead), or None."""
    for candidate in {Path(os.path.abspath(path)), Path(os.path.realpath(path))}:
        chain = []
        for entry in [candidate, *candidate.parents]:
            st = os.lstat(entry)
            chain.append((str(entry), st.st_uid, st.st_mode))
        problem = unsafe_path_entry(chain)
        if problem:
            return problem
    return None


def _windows_console_user_token(name: str) -> object:
    """The token of the user logged on at the console, or ConfigError if nobody is."""
    import pywintypes
    import win32ts

    session = win32ts.WTSGetActiveConsoleSessionId()
    try:
        if session == 0xFFFFFFFF:
            raise pywintypes.error(0, "WTSGetActiveConsoleSessionId", "no console session")
        return win32ts.WTSQueryUserToken(session)
    except pywintypes.error:
        raise ConfigError(f"not starting {name}: nobody is logged on to start it for, and the "
                          "agent will not run a desktop program as SYSTEM") from None


def _windows_start_in_user_session(name: str, argv: list[str], cwd: Path) -> None:
    """Start a desktop program as the user logged on at the console, on their desktop."""
    import win32con
    import win32process
    import win32profile

    token = _windows_console_user_token(name)
    startup = win32process.STARTUPINFO()
    startup.lpDesktop = "winsta0\\default"
    environment = win32profile.CreateEnvironmentBlock(token, False)
    win32process.CreateProcessAsUser(
        token, None, subprocess.list2cmdline(argv), None, None, False,
        win32con.CREATE_NEW_PROCESS_GROUP | win32con.CREATE_UNICODE_ENVIRONMENT,
        environment, str(cwd), startup)


def _service(name: str, verb: str) -> None:
    argv = ["sc", verb, name] if IS_WINDOWS else ["systemctl", verb, name]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=child_env())
    if result.returncode != 0:
        raise ConfigError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")


# ----------------------------------------------------------------------------- the agent's service
# Issue 17: `careline-agent service install|uninstall|status|start|stop`. What is installed is
# computed in careline.agent.service (pure); these classes only talk to the service manager.
# Both take their OS interface as an argument, so tests drive them with fakes.

def require_admin(is_admin: Callable[[], bool] | None = None) -> None:
    """PermissionDenied unless this process runs as root / an elevated Administrator."""
    if is_admin is None:
        is_admin = _windows_is_admin if IS_WINDOWS else (lambda: os.geteuid() == 0)
    if not is_admin():
        who = "an Administrator (elevated prompt)" if IS_WINDOWS else "root (sudo)"
        raise PermissionDenied(f"installing and controlling the agent service needs {who}")


def _windows_is_admin() -> bool:
    import ctypes

    return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]


def _run_checked(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=child_env())
    if result.returncode != 0:
        raise ConfigError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


class SystemdServices:
    """The agent's unit under /etc/systemd/system, driven with systemctl."""

    def __init__(self, unit_dir: Path = Path("/etc/systemd/system"),
                 run: Callable[[list[str]], str] = _run_checked,
                 systemctl: list[str] | None = None) -> None:
        self.unit_dir, self._run, self.systemctl = unit_dir, run, systemctl or ["systemctl"]

    def run(self, argv: list[str]) -> str:
        return self._run([*self.systemctl, *argv[1:]])

    def unit_path(self, name: str) -> Path:
        return self.unit_dir / f"{name}.service"

    def install(self, spec: ServiceSpec) -> None:
        write_file_atomic(self.unit_path(spec.name), systemd_unit(spec).encode(), mode=0o644)
        self.run(["systemctl", "daemon-reload"])
        self.run(["systemctl", "enable", f"{spec.name}.service"])

    def uninstall(self, name: str) -> None:
        if not self.unit_path(name).exists():
            raise ConfigError(f"service {name} is not installed")
        self.run(["systemctl", "disable", "--now", f"{name}.service"])
        self.unit_path(name).unlink()
        self.run(["systemctl", "daemon-reload"])

    def start(self, name: str) -> None:
        self.run(["systemctl", "start", f"{name}.service"])

    def stop(self, name: str) -> None:
        self.run(["systemctl", "stop", f"{name}.service"])

    def status(self, name: str) -> dict[str, str]:
        if not self.unit_path(name).exists():
            return {"installed": "no", "state": "not installed"}
        # `is-active` exits non-zero for anything but active: read its word, not its code
        state = self.run(["systemctl", "show", "-p", "ActiveState,SubState,UnitFileState",
                          f"{name}.service"])
        props = dict(line.split("=", 1) for line in state.splitlines() if "=" in line)
        return {"installed": "yes", "state": props.get("ActiveState", "unknown"),
                "detail": props.get("SubState", ""), "enabled": props.get("UnitFileState", "")}


# Windows service states (winsvc.h SERVICE_STOPPED ... SERVICE_PAUSED).
_WIN_STATES = {1: "stopped", 2: "start_pending", 3: "stop_pending", 4: "running",
               5: "continue_pending", 6: "pause_pending", 7: "paused"}
SC_ACTION_RESTART = 1
WINDOWS_RESTART_DELAYS_MS = (5_000, 30_000, 60_000)
WINDOWS_FAILURE_RESET_SECONDS = 86_400


class WindowsServices:
    """The agent as a Windows service, through pywin32 (win32serviceutil, win32service).

    The service process is the agent's own program started with `service-host`, which hands
    itself to the service control dispatcher (`windows_service_host`). Recovery: restart after
    5 s, 30 s, 60 s, counting failures over a day, also when the agent exits with an error.
    """

    def __init__(self, win32serviceutil: Any = None, win32service: Any = None) -> None:
        if win32serviceutil is None or win32service is None:
            import win32service as _service
            import win32serviceutil as _util

            win32serviceutil, win32service = _util, _service
        self.util, self.svc = win32serviceutil, win32service

    def install(self, spec: ServiceSpec) -> None:
        exe, *args = spec.command
        self.util.InstallService(
            None, spec.name, "Careline agent", startType=self.svc.SERVICE_AUTO_START,
            exeName=exe, exeArgs=subprocess.list2cmdline(args), description=SERVICE_DESCRIPTION,
        )
        manager = self.svc.OpenSCManager(None, None, self.svc.SC_MANAGER_ALL_ACCESS)
        try:
            handle = self.svc.OpenService(manager, spec.name, self.svc.SERVICE_ALL_ACCESS)
            try:
                self.svc.ChangeServiceConfig2(handle, self.svc.SERVICE_CONFIG_FAILURE_ACTIONS, {
                    "ResetPeriod": WINDOWS_FAILURE_RESET_SECONDS, "RebootMsg": None, "Command": None,
                    "Actions": [(SC_ACTION_RESTART, delay) for delay in WINDOWS_RESTART_DELAYS_MS],
                })
                # also restart when the agent exits with an error code, not only on a crash
                self.svc.ChangeServiceConfig2(handle, self.svc.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, True)
            finally:
                self.svc.CloseServiceHandle(handle)
        finally:
            self.svc.CloseServiceHandle(manager)

    def uninstall(self, name: str) -> None:
        with contextlib.suppress(Exception):  # not running is fine
            self.util.StopService(name)
        self.util.RemoveService(name)

    def start(self, name: str) -> None:
        self.util.StartService(name)

    def stop(self, name: str) -> None:
        self.util.StopService(name)

    def status(self, name: str) -> dict[str, str]:
        try:
            state = self.util.QueryServiceStatus(name)[1]
        except Exception:
            return {"installed": "no", "state": "not installed"}
        return {"installed": "yes", "state": _WIN_STATES.get(state, f"unknown ({state})")}


def service_manager() -> SystemdServices | WindowsServices:
    if IS_WINDOWS:
        return WindowsServices()
    # Both overridable where systemd is not PID 1 (containers; the tests use a stand-in).
    return SystemdServices(
        Path(os.environ.get("CARELINE_AGENT_UNIT_DIR", "/etc/systemd/system")),
        systemctl=shlex.split(os.environ.get("CARELINE_AGENT_SYSTEMCTL", "systemctl")),
    )


def windows_service_class(win32serviceutil: Any, win32service: Any,
                          run: Callable[[Callable[[Callable[[], None]], None]], int],
                          exit_process: Callable[[int], None] = os._exit) -> type:
    """The pywin32 ServiceFramework class for the agent. `run(on_start)` runs the agent
    until the stop function it hands to `on_start` is called (careline.agent.entry.run_agent);
    a non-zero result ends the process without reporting "stopped", so the recovery actions
    restart it (a self-update's hand-over)."""

    # pywin32 has no type stubs and is passed in (Windows only), so its base class is Any.
    class AgentService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = "Careline agent"
        _svc_description_ = SERVICE_DESCRIPTION

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._stop: Callable[[], None] | None = None
            self._stop_requested = False

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
            self._stop_requested = True
            if self._stop is not None:
                self._stop()

        def SvcDoRun(self) -> None:
            def started(stop: Callable[[], None]) -> None:
                self._stop = stop
                if self._stop_requested:
                    stop()

            code = run(started)
            if code and not self._stop_requested:
                exit_process(code)

    return AgentService


def windows_service_host(state: str | None) -> None:
    """Entry of the service process the Windows service manager starts (`service-host`)."""
    import servicemanager
    import win32service
    import win32serviceutil

    from careline.agent.entry import run_agent

    cls = windows_service_class(win32serviceutil, win32service,
                                lambda on_start: run_agent(state, False, on_start))
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(cls)
    servicemanager.StartServiceCtrlDispatcher()


# ----------------------------------------------------------------------------- hardware
# Tests and fleet simulators run many agents on one PC: each gives its own raw identity
# (a JSON object with uuid, serial, disk, mac) in this variable.
HARDWARE_ENV = "CARELINE_AGENT_HARDWARE"


def hardware_identity() -> dict[str, str]:
    """This PC's hardware identity, hashed (shared.hardware): what survives a reinstall.
    Fields the OS does not expose (or this user may not read) are left out."""
    import json

    from careline.shared.hardware import hashed

    override = os.environ.get(HARDWARE_ENV)
    if override:
        try:
            raw = json.loads(override)
        except ValueError:
            raise ConfigError(f"{HARDWARE_ENV} must be a JSON object") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{HARDWARE_ENV} must be a JSON object")
        return hashed(raw)
    reader = _windows_hardware if IS_WINDOWS else _linux_hardware
    try:
        found = reader()
    except (OSError, subprocess.SubprocessError, ValueError):
        found = {}
    return hashed({**found, "mac": _primary_mac()})


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip() or None
    except OSError:  # missing, or root-only (product_serial)
        return None


def _linux_hardware() -> dict[str, str | None]:
    dmi = "/sys/class/dmi/id"
    return {"uuid": _read(f"{dmi}/product_uuid"), "serial": _read(f"{dmi}/product_serial"),
            "disk": _linux_boot_disk_serial()}


def _linux_boot_disk_serial() -> str | None:
    """Serial of the disk holding /: its partition's parent block device in sysfs."""
    root = next((p.device for p in psutil.disk_partitions(all=False) if p.mountpoint == "/"), "")
    if not root.startswith("/dev/"):
        return None
    block = Path("/sys/class/block") / Path(os.path.realpath(root)).name
    disk = block.resolve().parent if (block / "partition").exists() else block.resolve()
    return (_read(str(disk / "device" / "serial"))
            or _read(str(disk / "device" / "vpd_pg80"))
            or _read(str(disk / "serial")))


def _windows_hardware() -> dict[str, str | None]:
    """SMBIOS and boot-disk serials through CIM (PowerShell ships with every Windows)."""
    import json

    script = (
        "$p = Get-CimInstance Win32_ComputerSystemProduct; $b = Get-CimInstance Win32_BIOS;"
        " $d = Get-Partition -DriveLetter $env:SystemDrive[0] | Get-Disk;"
        " @{uuid=$p.UUID; serial=$b.SerialNumber; disk=$d.SerialNumber} | ConvertTo-Json"
    )
    result = subprocess.run(["powershell", "-NoProfile", "-NonInteractive", "-Command", script],
                            capture_output=True, text=True, timeout=60)
    data = json.loads(result.stdout) if result.returncode == 0 else {}
    return {key: str(data[key]) if data.get(key) else None for key in ("uuid", "serial", "disk")}


def _primary_mac() -> str | None:
    """The MAC of the first physical network card by name (virtual bridges, VPNs and
    loopback come and go; on Linux a physical card has a `device` link in sysfs)."""
    macs = []
    for name, addresses in psutil.net_if_addrs().items():
        if not IS_WINDOWS and not os.path.exists(f"/sys/class/net/{name}/device"):
            continue
        if IS_WINDOWS and any(v in name.lower() for v in ("virtual", "vpn", "loopback", "vethernet")):
            continue
        macs += [(name, a.address) for a in addresses if a.family == psutil.AF_LINK]
    return min(macs)[1] if macs else None
