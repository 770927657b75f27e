"""A stand-in for `systemctl` where systemd is not PID 1 (this container): it reads the
real unit file the agent installed and runs its ExecStart= command under a small supervisor
that does what systemd does with it (without the sandbox): Restart=on-failure except
RestartPreventExitStatus=, and on stop KillMode=process (SIGTERM to the main process only).
So `careline-agent service ...` and a self-update's hand-over run end to end.

    CARELINE_AGENT_UNIT_DIR=DIR python fake_systemctl.py daemon-reload | enable U |
        disable --now U | start U | stop U | restart U | show -p PROPS U

State (enabled units, pids, every call in calls.log) lives in DIR. RestartSec= is replaced
by FAKE_SYSTEMD_RESTART_SEC (default 0.5 s) to keep tests short.
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


def setting(unit: str, key: str) -> str:
    for line in (UNIT_DIR / unit).read_text().splitlines():
        if line.startswith(key + "="):
            return line[len(key) + 1:]
    return ""


def exec_start(unit: str) -> list[str]:
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(setting(unit, "ExecStart"))]


def supervise(unit: str) -> int:
    """Run ExecStart= until stopped; restart it on failure like Restart=on-failure."""
    prevent = {int(code) for code in setting(unit, "RestartPreventExitStatus").split()}
    delay = float(os.environ.get("FAKE_SYSTEMD_RESTART_SEC", "0.5"))
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()  # KillMode=process: the main process only

    signal.signal(signal.SIGTERM, on_term)
    while not stopping:
        with open(UNIT_DIR / f"{unit}.out", "ab") as out:
            child = subprocess.Popen(exec_start(unit), stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        (UNIT_DIR / f"{unit}.main").write_text(str(child.pid))
        code = child.wait()
        with open(UNIT_DIR / "calls.log", "a") as log:
            log.write(f"# {unit} main process exited with {code}\n")
        if stopping or code == 0 or code in prevent:
            break
        time.sleep(delay)
    return 0


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
    if verb == "supervise":
        return supervise(unit)
    if verb == "restart":
        stop(unit)
        verb = "start"
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
        proc = subprocess.Popen([sys.executable, __file__, "supervise", unit], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
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
