"""One real agent's footprint: RSS and CPU share of `careline-agent run` (issue 4).

    python bench/agent_footprint.py [--seconds 180] [--heartbeat-interval 30] [--json]
                                    [--agent-binary dist/careline-agent]

Starts a real coordinator (`careline init` in a temporary data dir + `careline serve`),
enrolls one agent with `careline-agent enroll`, runs `careline-agent run` for --seconds and
samples it with psutil once a second: RSS (mean, max) and CPU as a share of one core
(CPU seconds used over the window / wall seconds, children included). The first --warmup
seconds (start-up, enrollment imports, first heartbeat) are left out of the figures and
reported separately. Targets: <= 35 MB RSS and <= 0.5% of a core at the 30 s heartbeat.

The agent runs under `python -X importtime`, so the report also says what the `run` path
imported (module count, total import time, the slowest top-level imports, and whether click,
python-tuf or cryptography got loaded), and on Linux which mappings hold its RSS
(/proc/PID/smaps). `--agent-binary` measures the self-contained build of
scripts/build-agent.sh instead (its bootloader and the agent process together; no import
profile then).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from loopback import free_port, stop_processes, wait_for_port

PYTHON = sys.executable
TARGET_RSS_MB = 35.0
TARGET_CPU_PERCENT = 0.5


def log(message: str) -> None:
    print(f"[footprint {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """CPU of the process, its live children, and children it has waited for."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        total += t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
    return total


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        total += proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    return total


HEAVY = ("click", "tuf", "cryptography", "careline.agent.installer", "careline.shared.trust")


def import_profile(lines: list[str]) -> dict[str, Any]:
    """Summarise `-X importtime` lines: count, total, slowest top-level imports, heavy ones."""
    rows = []
    for line in lines:
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        _self, cumulative, name = line.split(":", 1)[1].split("|")
        rows.append((name.rstrip(), int(cumulative)))
    top = [(n.strip(), c) for n, c in rows if not n.startswith("  ")]
    names = {n.strip() for n, _ in rows}
    return {
        "modules": len(rows),
        "total_ms": round(sum(c for _, c in top) / 1000, 1),
        "slowest": [{"module": n, "ms": round(c / 1000, 1)}
                    for n, c in sorted(top, key=lambda r: -r[1])[:8]],
        "loaded": {h: any(n == h or n.startswith(h + ".") for n in names) for h in HEAVY},
    }


def rss_by_mapping(pid: int, top: int = 8) -> list[dict[str, Any]]:
    """Where a process's RSS is (Linux): anonymous memory, heap, each shared library."""
    sizes: dict[str, int] = {}
    current = "[anon]"
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                parts = line.split()
                if parts and not parts[0].endswith(":"):
                    current = os.path.basename(parts[5]) if len(parts) > 5 else "[anon]"
                elif parts and parts[0] == "Rss:":
                    sizes[current] = sizes.get(current, 0) + int(parts[1])
    except OSError:
        return []
    return [{"mapping": k, "mb": round(v / 1024, 1)}
            for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--heartbeat-interval", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--agent-binary", default=None,
                        help="a self-contained careline-agent build to measure instead")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="careline-footprint-"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(root / log_name, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when ignored, as for a background job
    try:
        data = root / "coordinator"
        port = free_port()
        init = subprocess.run(
            [PYTHON, "-m", "careline.coordinator.cli", "init", "--data", str(data), "--listen",
             f"127.0.0.1:{port}", "--heartbeat-interval", str(args.heartbeat_interval), "--json"],
            capture_output=True, text=True, timeout=120, check=True,
        )
        admin_token = json.loads(init.stdout)["admin_token"]
        coordinator = start([PYTHON, "-m", "careline.coordinator.cli", "serve", "--data", str(data)],
                            "coordinator.log")
        wait_for_port(port, coordinator)

        from careline.coordinator.client import AdminClient, Credentials

        credentials = Credentials(f"wss://127.0.0.1:{port}", admin_token,
                                  (data / "pki" / "ca.pem").read_text())
        with AdminClient(credentials) as client:
            client.call("customers.add", name="Footprint Co")
            join = client.call("tokens.create", customer="Footprint Co", uses=1)["join"]
        state = root / "agent"
        product = root / "product"
        product.mkdir()
        agent_cmd = ([args.agent_binary] if args.agent_binary
                     else [PYTHON, "-m", "careline.agent"])
        subprocess.run(
            [*agent_cmd, "enroll", join, "--state", str(state), "--product", f"KeToanPro={product}"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        run_cmd = agent_cmd if args.agent_binary else [PYTHON, "-X", "importtime", "-m", "careline.agent"]
        agent = start([*run_cmd, "run", "--state", str(state)], "agent.log")
        ps = psutil.Process(agent.pid)
        log(f"agent pid {agent.pid}, heartbeat {args.heartbeat_interval}s; "
            f"warm-up {args.warmup}s then sampling {args.seconds}s")
        time.sleep(args.warmup)
        warm_rss = tree_rss(ps)
        warm_cpu = tree_cpu_seconds(ps)
        t0 = time.monotonic()
        cpu0 = tree_cpu_seconds(ps)
        samples: list[int] = []
        end = t0 + args.seconds
        while time.monotonic() < end:
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with {agent.returncode}; see {root / 'agent.log'}")
            samples.append(tree_rss(ps))
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        wall = time.monotonic() - t0
        cpu = tree_cpu_seconds(ps) - cpu0
        tree = [ps, *ps.children(recursive=True)]  # the one-file build: bootloader + agent
        per_process_mb = [round(pr.memory_info().rss / 2**20, 1) for pr in tree]
        mappings = rss_by_mapping(max(tree, key=lambda pr: pr.memory_info().rss).pid)
        with AdminClient(credentials) as client:
            agents = client.call("agents.list")
        status = agents[0]["status"] if agents else "missing"
        results = {
            "seconds": round(wall, 1), "heartbeat_interval": args.heartbeat_interval,
            "samples": len(samples),
            "rss_mean_mb": round(statistics.fmean(samples) / 2**20, 1),
            "rss_max_mb": round(max(samples) / 2**20, 1),
            "cpu_percent_of_one_core": round(100 * cpu / wall, 3),
            "warmup": {"seconds": args.warmup, "rss_mb": round(warm_rss / 2**20, 1),
                       "cpu_seconds": round(warm_cpu, 2)},
            "agent_status_at_end": status,
            "agent": args.agent_binary or "python -m careline.agent",
            "imports": None if args.agent_binary else import_profile(
                (root / "agent.log").read_text(errors="replace").splitlines()),
            "rss_by_mapping": mappings,
            "rss_per_process_mb": per_process_mb,
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
            "targets": {},
        }
        results["targets"] = {
            "rss_le_35mb": results["rss_max_mb"] <= TARGET_RSS_MB,
            "cpu_le_0_5pct": results["cpu_percent_of_one_core"] <= TARGET_CPU_PERCENT,
        }
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stop_processes(reversed(procs))
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        ok = results["targets"]
        print(f"careline-agent run, {results['seconds']}s at a {args.heartbeat_interval}s heartbeat "
              f"(status at end: {status})")
        print(f"  RSS  mean {results['rss_mean_mb']} MB, max {results['rss_max_mb']} MB  "
              f"[{'ok' if ok['rss_le_35mb'] else 'MISSED'} <= {TARGET_RSS_MB:.0f} MB]")
        print(f"  CPU  {results['cpu_percent_of_one_core']}% of one core  "
              f"[{'ok' if ok['cpu_le_0_5pct'] else 'MISSED'} <= {TARGET_CPU_PERCENT}%]")
        if results["imports"]:
            imports = results["imports"]
            print(f"  imports  {imports['modules']} modules, {imports['total_ms']} ms; loaded: "
                  + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in imports["loaded"].items()))
            print("  slowest  " + ", ".join(f"{r['module']} {r['ms']} ms" for r in imports["slowest"]))
        if len(per_process_mb) > 1:
            print(f"  RSS per process (MB)  {per_process_mb}")
        if mappings:
            print("  RSS by mapping  " + ", ".join(f"{m['mapping']} {m['mb']}" for m in mappings))
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
