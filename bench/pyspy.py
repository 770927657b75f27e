"""py-spy helpers for the benchmarks: record a process for a while, summarise the samples.

    rec = Recording.start(pid, seconds, Path("prof.txt"))   # None if py-spy is missing
    ...                                                       # the load to profile
    summary = rec.finish()      # {"samples": N, "inclusive": {frame: %}, "self": {frame: %}}

Samples are taken with --nonblocking (the process is never paused) and --idle (waiting
threads count too, so "Runner.run" self time is the event loop waiting in epoll and
"_connection_worker_thread" self time is aiosqlite's thread waiting for work).
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame(raw: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)'."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", raw)
    if not m:
        return raw
    path = m.group(2)
    short = "/".join(path.split("/")[-2:])
    return f"{m.group(1)} ({short})"


def summarise(path: Path, top: int = 40, main_only: bool = True) -> dict[str, Any]:
    """Inclusive and self share of samples per frame (main thread only by default: the
    event loop is what serves agents)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [_frame(x) for x in stack.split(";") if x]
            if main_only and any("Thread._bootstrap" in x for x in frames[:3]):
                continue
            n = int(count)
            total += n
            for name in set(frames):
                inclusive[name] += n
            if frames:
                own[frames[-1]] += n
    if not total:
        return {"samples": 0}

    def share(counter: collections.Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)}

    return {"samples": total, "inclusive_percent": share(inclusive), "self_percent": share(own)}


class Recording:
    def __init__(self, proc: subprocess.Popen[bytes], out: Path) -> None:
        self.proc = proc
        self.out = out

    @classmethod
    def start(cls, pid: int, seconds: float, out: Path, rate: int = 100,
              busy_only: bool = False) -> Recording | None:
        """`busy_only`: no idle samples, and native frames (uvloop, OpenSSL) shown: where the
        CPU of a saturated phase goes, rather than where its wall time goes."""
        exe = py_spy()
        if exe is None:
            return None
        how = ["--native"] if busy_only else ["--nonblocking", "--idle"]
        proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
             "--rate", str(rate), *how, "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        return cls(proc, out)

    def finish(self, timeout: float = 60, top: int = 40) -> dict[str, Any]:
        """Wait for the recording to end (stop it at `timeout`) and summarise it."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(2)  # py-spy writes what it has on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if not self.out.exists():
            return {"samples": 0, "error": "py-spy wrote nothing (permissions?)"}
        return {"file": str(self.out), **summarise(self.out, top)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(5)


class Recordings:
    """Several processes recorded at once for `seconds`, each into `out`/<prefix><name>.txt."""

    def __init__(self, pids: Mapping[str, int], seconds: float, out: Path, prefix: str = "",
                 busy_only: bool = False) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.recordings = {name: Recording.start(pid, seconds, out / f"{prefix}{name}.txt",
                                                 busy_only=busy_only)
                           for name, pid in pids.items()}

    def finish(self, timeout: float = 30, top: int = 25) -> dict[str, Any]:
        """Each one's summary (Recording.finish), by name."""
        return {name: rec.finish(timeout, top) if rec else {"error": "py-spy is missing"}
                for name, rec in self.recordings.items()}
