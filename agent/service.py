"""The agent as a system service: what gets installed, computed without touching the OS.

`service_spec()` says how the service starts the agent and which folders it must be able to
write; `systemd_unit()` renders the Linux unit from it. Both are pure and tested directly
(tests/agent/test_service.py); `careline.agent.platform` installs the result with systemctl
or the Windows service manager.

Why the unit looks the way it does:
- Restart=on-failure, but not after exit code 3 (the coordinator refused this identity:
  revoked or unknown), where restarting cannot help (see careline.agent.entry.exit_code).
- The sandbox (ProtectSystem=strict, PrivateTmp, NoNewPrivileges, ProtectHome=read-only, ...)
  leaves writable only the state dir, the folders holding each product's install dir (the
  installer switches versions by renaming siblings there) and the agent's own install dir
  (it updates itself). A `-` prefix lets a folder be missing.
- KillMode=process: products the agent starts again (restart-product) run in the agent's
  cgroup; stopping or updating the agent must not kill them.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from careline.agent.entry import EXIT_REFUSED
from careline.agent.state import AgentConfig, StateDir

SERVICE_NAME = "careline-agent"
DISPLAY_NAME = "Careline agent"
DESCRIPTION = "Careline remote support agent: keeps this PC's business software healthy and up to date"
RESTART_SECONDS = 5


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: list[str]  # argv that runs the agent in the foreground
    state_dir: str
    writable: list[str]  # folders the agent must be able to write under the sandbox


def program_path() -> Path | None:
    """The agent's own program file, if it has one: the self-contained build, or a
    `careline-agent` launcher / console script. None for `python -m careline.agent`."""
    if getattr(sys, "frozen", False):
        return Path(sys.executable)
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name.startswith(SERVICE_NAME) and argv0.is_file():
        return argv0.resolve()
    return None


def agent_command(state_dir: Path, *, executable: str | None = None,
                  frozen: bool | None = None, verb: str = "run",
                  program: Path | None = None) -> list[str]:
    """How the service manager starts the agent: the self-contained binary itself, the
    agent's program (`program`, a launcher), or this Python running the package."""
    executable = executable or sys.executable
    frozen = getattr(sys, "frozen", False) if frozen is None else frozen
    if frozen:
        head = [executable]
    elif program is not None:
        head = [str(program)]
    else:
        head = [executable, "-m", "careline.agent"]
    return [*head, verb, "--state", str(state_dir)]


def agent_install_dir(*, executable: str | None = None, frozen: bool | None = None) -> Path:
    """The folder holding the agent's program: the binary's folder, or the Python prefix."""
    executable = executable or sys.executable
    frozen = getattr(sys, "frozen", False) if frozen is None else frozen
    return Path(executable).parent if frozen else Path(sys.prefix)


def service_spec(state: StateDir, config: AgentConfig, *, executable: str | None = None,
                 frozen: bool | None = None, verb: str = "run",
                 program: Path | None = None) -> ServiceSpec:
    writable = [str(state.path)]
    for product in config.products:
        writable.append(str(Path(product.install_dir).parent))
    writable.append(str(agent_install_dir(executable=executable, frozen=frozen)))
    if program is not None:
        writable.append(str(program.parent))  # a self-update replaces it
    return ServiceSpec(
        name=SERVICE_NAME,
        command=agent_command(state.path, executable=executable, frozen=frozen, verb=verb,
                              program=program),
        state_dir=str(state.path),
        writable=list(dict.fromkeys(writable)),  # unique, in order
    )


_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def systemd_quote(word: str) -> str:
    """One word for an ExecStart= or path line: `%` and `$` escaped, quoted when needed."""
    word = word.replace("%", "%%").replace("$", "$$")
    if _SAFE.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(spec: ServiceSpec) -> str:
    lines = [
        "[Unit]",
        f"Description={DESCRIPTION}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(systemd_quote(word) for word in spec.command),
        "Restart=on-failure",
        f"RestartSec={RESTART_SECONDS}",
        f"RestartPreventExitStatus={EXIT_REFUSED}",
        "KillMode=process",
        "TimeoutStopSec=30",
        # the sandbox
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        *(f"ReadWritePaths={systemd_quote('-' + path)}" for path in spec.writable),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
