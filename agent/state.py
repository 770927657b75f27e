"""The agent's state directory: identity, configuration and last known status.

    agent.key      Ed25519 private key (0600): the agent's identity
    ca.pem         the coordinator CA pinned at enrollment
    agent.json     configuration: agent id, coordinator URL, watched products, intervals
    outbox.db      events not yet acknowledged by the coordinator
    status.json    connection state and last report, for `careline-agent status`
    runtime.json   boot time and clean-stop mark, to detect power loss
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from careline.shared.errors import ConfigError
from careline.shared.files import write_file_atomic


class ProductConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A product the agent watches, as configured at enrollment."""

    name: str
    install_dir: str
    # How to start it again (argv, relative paths resolved in install_dir) or its service name.
    executable: list[str] | None = None
    service: str | None = None
    # Top-level entry in install_dir holding the customer's data: never replaced or checked.
    data_dir: str | None = None
    log_file: str | None = None
    # A service-like product that should always run: not running is a problem.
    expect_running: bool = False


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True):
    agent_id: str
    customer_id: int
    server_url: str
    heartbeat_interval: float = 30.0
    products: list[ProductConfig] = []
    # Re-check installed files against their manifests this often (seconds).
    verify_interval: float = 4 * 3600.0
    disk_full_percent: float = 90.0
    # How to reach the coordinator: None follows the OS / environment proxy settings
    # (HTTPS_PROXY, NO_PROXY; Windows Internet Options), "direct" ignores them, or an
    # http(s):// or socks5:// proxy URL given with `enroll --proxy`.
    proxy: str | None = None


DIRECT = "direct"


def websocket_proxy(setting: str | None) -> str | Literal[True] | None:
    """`setting` as websockets' connect(proxy=...) takes it: True for the OS settings."""
    if setting is None:
        return True
    return None if setting == DIRECT else setting


@dataclass(frozen=True)
class StateDir:
    path: Path

    @property
    def key_file(self) -> Path:
        return self.path / "agent.key"

    @property
    def ca_file(self) -> Path:
        return self.path / "ca.pem"

    @property
    def config_file(self) -> Path:
        return self.path / "agent.json"

    @property
    def outbox_file(self) -> Path:
        return self.path / "outbox.db"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def runtime_file(self) -> Path:
        return self.path / "runtime.json"

    @property
    def log_file(self) -> Path:
        return self.path / "agent.log"

    def enrolled(self) -> bool:
        return self.config_file.exists()

    def load_config(self) -> AgentConfig:
        try:
            return msgspec.json.decode(self.config_file.read_bytes(), type=AgentConfig)
        except FileNotFoundError:
            raise ConfigError(
                f"agent not enrolled in {self.path}: run `careline-agent enroll JOIN_STRING`"
            ) from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{self.config_file}: {exc}") from None

    def save_config(self, config: AgentConfig) -> None:
        write_file_atomic(self.config_file, msgspec.json.format(msgspec.json.encode(config)))

    def read_json(self, path: Path) -> dict[str, Any]:
        try:
            return dict(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def write_json(self, path: Path, value: dict[str, Any]) -> None:
        write_file_atomic(path, json.dumps(value, indent=1, default=str).encode())
