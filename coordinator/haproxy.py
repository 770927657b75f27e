"""The HAProxy configuration for several `careline serve` processes behind one address
(README "Scale-out"), as text from pure code, so `careline haproxy-config`, the test and
the benchmark use one; `find_haproxy` only looks the program up.

- TCP mode, TLS passed through: agents pin the coordinator's CA and sign its challenge
  over that TLS session, so the proxy must not terminate it.
- `balance leastconn`: agent connections are long-lived; round-robin would pile the
  reconnects after one process's death onto whichever process comes next.
- The health check completes a TLS handshake with each process (and checks its
  certificate against the coordinator's CA). A frozen process's kernel still accepts TCP
  connections, so a plain connect check would keep sending agents to it; the handshake
  needs the process itself. The check runs every `min(interval / 2, 5 s)` and may take as
  long (HAProxy bounds the handshake by the interval, whatever `timeout check` says); two
  failures take a process out. A frozen one is out before its agents give it up (they do
  within two heartbeat intervals) and their reconnects go to a live one (leastconn would
  otherwise send them to the frozen one, which holds fewest). A live one busy taking back
  a dead one's agents answers slowly, its handshake queued behind theirs: with the default
  30 s heartbeat it has 5 s per check. With 2 s, the survivor of a 20,000-agent pair was
  taken out again and again, and with no server left HAProxy reset every agent trying to
  come back.
- With health ports (`HOST:PORT/HEALTH_PORT` backends, each process run with
  `serve --health-listen`), the check is a plain `GET /health` on that port instead
  (coordinator/health_port.py): answered by the process's event loop, so a frozen process
  still fails it, but not queued behind the handshakes a busy one has in progress. It runs
  every `min(interval / 5, 5 s)`, so a frozen process is out before any of its agents
  notices (one interval after the freeze at the earliest) and tries to come back through
  the proxy, which would otherwise send it to the frozen one again. But a survivor too
  small for a dead peer's agents then stays in rotation and drowns (its accept queue
  outgrows the agents' connect timeout), where the TLS check took it out and HAProxy's
  resets shed load by accident (bench/README.md, 20,000 agents): an option, not the
  default, until the coordinator sheds excess connections itself before TLS.
- Idle timeouts above the technicians' idle limit: the coordinator decides when a quiet
  connection is dead (keepalive, `missed_heartbeats`, `admin_idle_timeout`), not the proxy.
- `server_maxconn`, what one coordinator process can hold (its open-files limit less a few
  hundred for its database and files): when a process dies, its agents come back to the
  others only up to that; the rest wait in HAProxy's queue (`timeout queue`) and retry,
  instead of being reset by a process out of file descriptors.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from careline.coordinator.datadir import host_port
from careline.coordinator.health_port import HEALTH_PATH
from careline.shared.errors import ConfigError


def find_haproxy() -> str | None:
    """The haproxy program (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("haproxy") or next(
        (str(p) for p in (Path("/usr/sbin/haproxy"), Path("/usr/local/sbin/haproxy")) if p.exists()), None)


CHECK_FALL = 2  # failed checks in a row that take a process out


def check_interval_ms(heartbeat_interval: float, health_port: bool = False) -> int:
    """Milliseconds between health checks, also what one may take (connect and TLS, or the
    health port's answer). A health port's check costs nearly nothing, so it runs often
    enough that a frozen process is out (CHECK_FALL checks timing out, each after waiting
    its turn) before its first agent notices, one heartbeat interval after the freeze at
    the earliest; the TLS check runs half as often as that allows, each may take as long."""
    share = 2 * CHECK_FALL + 1 if health_port else 2
    return max(100, round(min(heartbeat_interval / share, 5.0) * 1000))


def _host_port(value: str, what: str) -> str:
    """`value` as given, once it is HOST:PORT with a host and a port HAProxy can use."""
    host, port = host_port(value, what)
    if not host or not 0 < port < 65536:
        raise ConfigError(f"{what} {value!r} is not HOST:PORT")
    return value


def _backend(value: str) -> tuple[str, int | None]:
    """HOST:PORT, or HOST:PORT/HEALTH_PORT: the process's address and its health port."""
    address, sep, health = value.partition("/")
    if sep and not (health.isdigit() and 0 < int(health) < 65536):
        raise ConfigError(f"coordinator address {value!r}: the health port after '/' must be "
                          "a port number")
    return _host_port(address, "coordinator address"), int(health) if sep else None


def haproxy_config(listen: str, backends: Sequence[str], ca_file: str, *,
                   heartbeat_interval: float = 30.0, admin_idle_timeout: float = 900.0,
                   maxconn: int = 10_000, server_maxconn: int = 0) -> str:
    """haproxy.cfg for agents and technicians reaching `backends` (coordinator processes'
    HOST:PORT, or HOST:PORT/HEALTH_PORT with their health ports; one shared database) through
    `listen`; `ca_file` is the data dir's pki/ca.pem. `server_maxconn` 0: no limit per
    process."""
    _host_port(listen, "listen address")
    if not backends:
        raise ConfigError("at least one coordinator process (HOST:PORT) is needed")
    if any(c in ca_file for c in " \n#"):
        raise ConfigError(f"CA file path {ca_file!r} must not contain spaces or '#'")
    if heartbeat_interval <= 0 or maxconn <= 0 or server_maxconn < 0:
        raise ConfigError("heartbeat interval and maxconn must be positive")
    idle = max(60, int(admin_idle_timeout) + 60)
    parsed = [_backend(b) for b in backends]
    health_ports = [health for _, health in parsed if health is not None]
    if health_ports and len(health_ports) != len(parsed):
        raise ConfigError("give every coordinator address a health port (HOST:PORT/HEALTH_PORT) "
                          "or none: one backend cannot mix HTTP and TLS checks")
    check = check_interval_ms(heartbeat_interval, health_port=bool(health_ports))
    servers = [f"    server careline{i} {address}" + (f" port {health}" if health else "")
               for i, (address, health) in enumerate(parsed, 1)]
    limits = (f"inter {check}ms fall {CHECK_FALL} rise 2"
              + (f" maxconn {server_maxconn}" if server_maxconn else ""))
    checks = ([
        "    option httpchk",
        f"    http-check send meth GET uri {HEALTH_PATH} ver HTTP/1.0",
        "    http-check expect status 200",
        f"    default-server check {limits}",
    ] if health_ports else [
        f"    default-server check check-ssl verify required ca-file {ca_file} {limits}",
    ])
    return "\n".join([
        "global",
        f"    maxconn {maxconn}",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        f"    timeout client {idle}s",
        f"    timeout server {idle}s",
        f"    timeout check {check}ms",
        "    timeout queue 10s",
        "    option redispatch",
        "    retries 2",
        "",
        "frontend careline",
        f"    bind {listen}",
        f"    maxconn {maxconn}",
        "    default_backend coordinators",
        "",
        "backend coordinators",
        "    balance leastconn",
        *checks,
        *servers,
        "",
    ])
