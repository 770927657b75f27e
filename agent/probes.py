"""What the agent checks on its machine: health figures and trouble conditions.

`Prober.check()` is called once per heartbeat; it keeps the little history needed to see a
crash loop or a growing I/O error count. Expensive checks (file integrity, SMART) run on
their own, slower schedule.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

import psutil

from careline.agent import platform as osx
from careline.agent.service import program_path
from careline.agent.state import AgentConfig, ProductConfig
from careline.shared import __version__
from careline.shared.errors import ConfigError
from careline.shared.manifest import read_manifest, verify_tree
from careline.shared.protocol import (
    AGENT_PRODUCT,
    DETAIL,
    MAX_DISKS,
    MAX_PROBLEMS,
    MAX_PRODUCTS,
    NAME,
    SHORT,
    DiskHealth,
    Health,
    Problem,
    ProductHealth,
)

CRASH_LOOP_RESTARTS = 3
CRASH_LOOP_WINDOW = 600.0
SMART_INTERVAL = 3600.0


def product_version(product: ProductConfig) -> str | None:
    try:
        manifest = read_manifest(Path(product.install_dir))
    except ConfigError:
        return None
    return manifest.version if manifest else None


def integrity_problems(product: ProductConfig) -> list[str]:
    """Files of the installed product that differ from its manifest ('' list when intact)."""
    install_dir = Path(product.install_dir)
    try:
        manifest = read_manifest(install_dir)
    except ConfigError as exc:
        return [f"manifest: {exc}"]
    if manifest is None:
        return []
    ignore = frozenset({product.data_dir}) if product.data_dir else frozenset()
    return [f"{m.path}: {m.problem}" for m in verify_tree(install_dir, manifest, ignore)]


class Prober:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._pids: dict[str, int | None] = {}
        self._restarts: dict[str, deque[float]] = {}
        self._integrity: dict[str, list[str]] = {}
        self._last_verify = -float("inf")  # verify at the first check
        self._verifying = threading.RLock()  # check() and the updater run in threads
        self._io_errors: dict[str, int] = {}
        self._smart_failing: list[str] = []
        self._last_smart = -float("inf")
        self._own_program = program_path() is not None  # a self-updatable agent
        psutil.cpu_percent(interval=None)  # prime: the first reading is meaningless

    def verify_now(self) -> dict[str, list[str]]:
        with self._verifying:
            self._integrity = {p.name: integrity_problems(p) for p in self.config.products}
            self._last_verify = time.monotonic()
            return self._integrity

    def integrity(self) -> dict[str, list[str]]:
        """Integrity problems by product, hashing the product trees again only when the
        last check is older than verify_interval: the heartbeat's check and the updater's
        periodic report share one hashing per schedule."""
        with self._verifying:
            if time.monotonic() - self._last_verify >= self.config.verify_interval:
                return self.verify_now()
            return self._integrity

    def check(self) -> Health:
        now = time.monotonic()
        self.integrity()
        problems: list[Problem] = []
        disks = []
        for mount in osx.disk_mounts():
            try:
                usage = psutil.disk_usage(mount)
            except OSError:
                continue
            disks.append(DiskHealth(mount[:NAME], usage.total, usage.used, usage.percent))
            if usage.percent >= self.config.disk_full_percent:
                problems.append(Problem("disk_full", mount, f"{usage.percent:.0f}% used"))
        problems += [Problem("disk_failing", d, detail) for d, detail in self._disk_failures(now)]
        products = []
        for product in self.config.products:
            procs = osx.product_processes(product)
            pid = procs[0].pid if procs else None
            version = product_version(product)
            products.append(ProductHealth(product.name[:NAME], version and version[:SHORT],
                                          bool(procs), pid))
            problems += self._product_problems(product, pid, now)
        if self._own_program:  # the agent itself, a product its releases update (issue 17)
            products.append(ProductHealth(AGENT_PRODUCT, __version__, True, os.getpid()))
        memory = psutil.virtual_memory()
        boot = psutil.boot_time()
        # Within the coordinator's bounds (shared/protocol.py), or it refuses the heartbeat.
        return Health(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_total=memory.total, memory_used=memory.total - memory.available,
            memory_percent=memory.percent, disks=disks[:MAX_DISKS], boot_time=boot,
            uptime=time.time() - boot, os=osx.os_description()[:NAME],
            agent_version=__version__, products=products[:MAX_PRODUCTS],
            problems=[Problem(pr.kind, pr.subject[:NAME], pr.detail[:DETAIL])
                      for pr in problems[:MAX_PROBLEMS]],
        )

    def _product_problems(self, product: ProductConfig, pid: int | None, now: float) -> list[Problem]:
        problems = []
        restarts = self._restarts.setdefault(product.name, deque())
        previous = self._pids.get(product.name)
        if pid is not None and previous is not None and pid != previous:
            restarts.append(now)
        self._pids[product.name] = pid
        while restarts and now - restarts[0] > CRASH_LOOP_WINDOW:
            restarts.popleft()
        if len(restarts) >= CRASH_LOOP_RESTARTS:
            problems.append(Problem(
                "product_crash_loop", product.name,
                f"restarted {len(restarts)} times in {CRASH_LOOP_WINDOW / 60:.0f} minutes",
            ))
        if pid is None and product.expect_running:
            problems.append(Problem("product_not_running", product.name, "no process found"))
        mismatches = self._integrity.get(product.name)
        if mismatches:
            shown = "; ".join(mismatches[:5]) + (" ..." if len(mismatches) > 5 else "")
            problems.append(Problem("integrity_mismatch", product.name, shown))
        return problems

    def _disk_failures(self, now: float) -> list[tuple[str, str]]:
        failures = []
        # Linux counts I/O errors per SCSI/SATA device; any increase is a failing disk.
        for counter in Path("/sys/block").glob("*/device/ioerr_cnt"):
            device = counter.parent.parent.name
            try:
                count = int(counter.read_text().strip(), 16)
            except (OSError, ValueError):
                continue
            baseline = self._io_errors.setdefault(device, count)
            if count > baseline:
                failures.append((device, f"{count - baseline} I/O errors since the agent started"))
        if now - self._last_smart >= SMART_INTERVAL:
            self._last_smart = now
            self._smart_failing = smart_failures()
        failures += [(d, "SMART health check failed") for d in self._smart_failing]
        return failures


def smart_failures() -> list[str]:
    """Devices whose SMART overall health is not PASSED, where smartctl is installed."""
    smartctl = shutil.which("smartctl")
    if smartctl is None:
        return []
    failing = []
    try:
        scan = subprocess.run([smartctl, "--scan"], capture_output=True, text=True, timeout=30,
                              env=osx.child_env())
        for line in scan.stdout.splitlines():
            device = line.split(" ", 1)[0]
            if not device.startswith(("/dev/", "\\\\.\\")):
                continue
            health = subprocess.run(
                [smartctl, "-H", device], capture_output=True, text=True, timeout=30,
                env=osx.child_env(),
            )
            # Bit 3 of smartctl's exit status: "disk failing".
            if health.returncode & 0b1000:
                failing.append(os.path.basename(device))
    except (OSError, subprocess.TimeoutExpired):
        return []
    return failing
