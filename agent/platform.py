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
