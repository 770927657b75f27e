"""The agent's fixed set of typed actions. Nothing here runs a command sent over the network."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import psutil

from careline.agent import platform as osx
from careline.agent.probes import integrity_problems, product_version, smart_failures
from careline.agent.state import AgentConfig, ProductConfig, StateDir
from careline.shared import protocol as p
from careline.shared.errors import CarelineError, ConfigError

RESTART_WAIT_SECONDS = 15.0


def find_product(config: AgentConfig, name: str) -> ProductConfig:
    for product in config.products:
        if product.name == name:
            return product
    raise ConfigError(f"product {name!r} is not watched on this machine")


def tail(path: Path, lines: int, max_bytes: int) -> list[str]:
    """The last `lines` lines of a log, reading at most `max_bytes` from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError as exc:
        return [f"<cannot read {path}: {exc.strerror}>"]
    return list(collections.deque(data.decode(errors="replace").splitlines(), maxlen=lines))


def diagnostics(config: AgentConfig, state: StateDir, request: p.Diagnose) -> dict[str, Any]:
    """A bundle a technician can read on the phone; logs are cut to keep it under the cap."""
    memory = psutil.virtual_memory()
    bundle: dict[str, Any] = {
        "system": {
            "os": osx.os_description(), "hostname": platform.node(),
            "cpu_count": psutil.cpu_count(), "memory_total": memory.total,
            "memory_percent": memory.percent, "boot_time": psutil.boot_time(),
            "python": platform.python_version(),
        },
        "disks": [],
        "smart_failing": smart_failures(),
        "products": {},
        "logs": {},
    }
    for mount in osx.disk_mounts():
        try:
            usage = psutil.disk_usage(mount)
        except OSError:
            continue
        bundle["disks"].append({"mount": mount, "total": usage.total, "percent": usage.percent})
    logs = {"agent": state.log_file}
    for product in config.products:
        procs = osx.product_processes(product)
        bundle["products"][product.name] = {
            "version": product_version(product), "running": bool(procs),
            "pids": [proc.pid for proc in procs], "integrity": integrity_problems(product),
        }
        if product.log_file:
            logs[product.name] = Path(product.install_dir, product.log_file)
    for name, path in logs.items():
        bundle["logs"][name] = tail(path, request.log_lines, request.max_bytes)
    # Cut the oldest lines of the longest log until the whole bundle fits the cap.
    while len(json.dumps(bundle, default=str)) > request.max_bytes:
        longest = max(bundle["logs"].values(), key=lambda lines: len(json.dumps(lines)))
        if not longest:
            break
        del longest[: len(longest) // 4 + 1]
    bundle["size_cap_bytes"] = request.max_bytes
    return bundle


def restart_product(config: AgentConfig, state: StateDir, name: str) -> dict[str, Any]:
    product = find_product(config, name)
    osx.check_startable(product)  # refuse before stopping it, not after
    before = [proc.pid for proc in osx.product_processes(product)]
    osx.stop_product(product)
    osx.start_product(product, state.path / f"{product.name}.out.log")
    deadline = time.monotonic() + RESTART_WAIT_SECONDS
    after: list[int] = []
    while time.monotonic() < deadline:
        after = [proc.pid for proc in osx.product_processes(product)]
        if after:
            break
        time.sleep(0.2)
    return {"product": name, "pids_before": before, "pids_after": after, "running": bool(after)}


async def perform(command: p.Command, config: AgentConfig, state: StateDir) -> p.CommandResult:
    """Run one action off the event loop; its failure is an answer, never a crash."""
    action = command.action
    try:
        if isinstance(action, p.Ping):
            data: dict[str, Any] = {"agent_time": time.time()}
        elif isinstance(action, p.Diagnose):
            data = await asyncio.to_thread(diagnostics, config, state, action)
        elif isinstance(action, p.RestartProduct):
            data = await asyncio.to_thread(restart_product, config, state, action.product)
        else:  # pragma: no cover - the decoder admits only the actions above
            raise ConfigError(f"unsupported action {type(action).__name__}")
        p.check_data(data)  # what the coordinator would refuse is an error here, not a kick
    except (CarelineError, OSError, psutil.Error, ValueError) as exc:
        return p.CommandResult(id=command.id, ok=False, error=str(exc)[:p.DETAIL])
    return p.CommandResult(id=command.id, ok=True, data=data)
