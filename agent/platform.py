"""Everything that differs between Windows and Linux, in one place.

Paths, how a product's processes are found, and how a product is stopped and started.
The rest of the agent calls these functions and never tests the OS itself.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import psutil

from careline.agent.state import ProductConfig
from careline.shared.errors import ConfigError

IS_WINDOWS = sys.platform == "win32"


def default_state_dir() -> Path:
    if IS_WINDOWS:
        base = os.environ.get("PROGRAMDATA", r"C:\ProgramData")
        return Path(base) / "Careline" / "agent"
    if os.geteuid() == 0:
        return Path("/var/lib/careline-agent")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "careline-agent"


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
            creationflags=flags, start_new_session=not IS_WINDOWS,
        )


def _service(name: str, verb: str) -> None:
    argv = ["sc", verb, name] if IS_WINDOWS else ["systemctl", verb, name]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ConfigError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")


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
