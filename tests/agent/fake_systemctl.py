"""A stand-in for `systemctl` where systemd is not PID 1 (this container): it reads the
real unit file the agent installed and starts its ExecStart= command as systemd would
(without the sandbox), so `careline-agent service ...` runs end to end.

    CARELINE_AGENT_UNIT_DIR=DIR python fake_systemctl.py daemon-reload | enable U |
        disable --now U | start U | stop U | show -p PROPS U

State (enabled units, pids, every call in calls.log) lives in DIR.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

UNIT_DIR = Path(os.environ["CARELINE_AGENT_UNIT_DIR"])


def exec_start(unit: str) -> list[str]:
    for line in (UNIT_DIR / unit).read_text().splitlines():
        if line.startswith("ExecStart="):
            return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line[10:])]
    raise SystemExit(f"{unit}: no ExecStart")


def pid_of(unit: str) -> int | None:
    try:
        pid = int((UNIT_DIR / f"{unit}.pid").read_text())
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().split(")")[-1].split()[0] == "Z":
                return None
        return pid
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def stop(unit: str) -> None:
    pid = pid_of(unit)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if pid_of(unit) is None:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    with open(UNIT_DIR / "calls.log", "a") as log:
        log.write(" ".join(argv) + "\n")
    verb, unit = argv[0], argv[-1]
    if verb == "daemon-reload":
        return 0
    if not (UNIT_DIR / unit).exists():
        print(f"Unit {unit} not found.", file=sys.stderr)
        return 5
    if verb == "enable":
        (UNIT_DIR / f"{unit}.enabled").touch()
    elif verb == "disable":
        (UNIT_DIR / f"{unit}.enabled").unlink(missing_ok=True)
        if "--now" in argv:
            stop(unit)
    elif verb == "start" and pid_of(unit) is None:
        with open(UNIT_DIR / f"{unit}.out", "ab") as out:
            proc = subprocess.Popen(exec_start(unit), stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        (UNIT_DIR / f"{unit}.pid").write_text(str(proc.pid))
    elif verb == "stop":
        stop(unit)
    elif verb == "show":
        running = pid_of(unit) is not None
        print(f"ActiveState={'active' if running else 'inactive'}")
        print(f"SubState={'running' if running else 'dead'}")
        print(f"UnitFileState={'enabled' if (UNIT_DIR / f'{unit}.enabled').exists() else 'disabled'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
