"""Everything that differs between Windows and Linux, in one place.

Paths, how a product's processes are found, and how a product is stopped and started.
The rest of the agent calls these functions and never tests the OS itself.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
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


def start_product(product: ProductConfig, log_path: Path) -> None:
    if product.service:
        _service(product.service, "start")
        return
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
    # Detached, so the product outlives the agent like a program the user started.
    flags = 0
    if IS_WINDOWS:
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    with open(log_path, "ab") as log:
        subprocess.Popen(
            argv, cwd=install_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            creationflags=flags, start_new_session=not IS_WINDOWS, env=child_env(),
        )


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

    class AgentService(win32serviceutil.ServiceFramework):
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
