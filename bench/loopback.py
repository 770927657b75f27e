"""What every benchmark needs to run servers on 127.0.0.1: a free port, waiting for it,
and stopping every process it started."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A port nothing listens on, below the kernel's range for outgoing connections: with
    tens of thousands of loopback connections those ports are all but taken, and a killed
    coordinator's port (an ephemeral one) was taken by a new outgoing connection before
    its restart could bind it again."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    with socket.socket() as s:  # all taken: any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Until something listens on `port`; fails early if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def allow_one_address(data: Path) -> None:
    """A coordinator data dir whose caps on unauthenticated connections count per channel
    only: every simulated agent connects from 127.0.0.1, as if through one proxy."""
    settings = data / "careline.toml"
    kept = [line for line in settings.read_text().splitlines()
            if not line.startswith("max_unauthenticated_per_address")]
    settings.write_text("\n".join([*kept, "max_unauthenticated_per_address = 100000", ""]))


def stop_processes(procs: Iterable[subprocess.Popen[Any]], grace: float = 10.0) -> None:
    """SIGTERM every live one, give them `grace` seconds between them, then SIGKILL."""
    live = [proc for proc in procs if proc.poll() is None]
    for proc in live:
        with contextlib.suppress(OSError):
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in live:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(10)
