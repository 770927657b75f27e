"""The coordinator's data directory: what lives where, and its settings file.

    careline.toml      settings (listen address, database URL, heartbeat interval ...)
    careline.db        SQLite database (unless `database` points at PostgreSQL)
    pki/               private CA (ca.pem is what agents pin) and TLS server certificate
    local-admin.token  credential for the technician CLI run next to the server (0600)
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import msgspec

from careline.shared.errors import ConfigError

DEFAULT_DATA_DIR = "careline-data"


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:8443"
    # URL agents are told to use in join strings; defaults to wss://<listen>.
    public_url: str = ""
    # SQLAlchemy URL; empty means the SQLite file in the data dir.
    database: str = ""
    heartbeat_interval: float = 30.0
    # An agent silent for this many intervals is offline.
    missed_heartbeats: int = 3
    # Vendor policy file (TOML); empty means the built-in defaults.
    policy: str = ""
    # Web console and REST API (HOST:PORT, same TLS certificate); empty: not served.
    web: str = ""
    # Shown on care reports: the vendor's name and logo (a PNG or SVG file).
    vendor_name: str = "Careline"
    vendor_logo: str = ""
    # A technician connection with no request for this many seconds is closed.
    admin_idle_timeout: float = 900.0
    # Connections one address may hold open before authenticating, on each channel; 0 means
    # the built-in caps (coordinator/quotas.py). Raise it when every agent arrives through
    # one address (a TCP proxy without the PROXY protocol, a load test).
    max_unauthenticated_per_address: int = 0
    # Plain-HTTP health endpoint (HOST:PORT) for a load balancer's checks (coordinator/
    # health_port.py); empty: not served.
    health_listen: str = ""

    def listen_host_port(self) -> tuple[str, int]:
        return host_port(self.listen, "listen address")

    def health_host_port(self) -> tuple[str, int] | None:
        return host_port(self.health_listen, "health listen address") if self.health_listen else None


def host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_settings(raw: dict[str, Any], source: str) -> Settings:
    """Settings from a parsed careline.toml; an unknown key or a bad value is named."""
    known = {f.name for f in fields(Settings)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{source}: unknown settings {sorted(unknown)}")
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:  # "Expected `float`, got `str` - at `$.x`"
        raise ConfigError(f"{source}: {exc}".replace("$.", "")) from None
    for name, low in (("heartbeat_interval", 0.1), ("missed_heartbeats", 1),
                      ("admin_idle_timeout", 1.0)):
        if getattr(settings, name) < low:
            raise ConfigError(f"{source}: {name} must be at least {low}")
    return settings


def resolve(data: str | os.PathLike[str] | None) -> Path:
    return Path(data or os.environ.get("CARELINE_DATA") or DEFAULT_DATA_DIR).resolve()


@dataclass(frozen=True)
class DataDir:
    path: Path

    @property
    def settings_file(self) -> Path:
        return self.path / "careline.toml"

    @property
    def sqlite_file(self) -> Path:
        return self.path / "careline.db"

    @property
    def pki(self) -> Path:
        return self.path / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def local_token_file(self) -> Path:
        return self.path / "local-admin.token"

    def exists(self) -> bool:
        return self.settings_file.exists()

    def require(self) -> DataDir:
        if not self.exists():
            raise ConfigError(f"{self.path} is not a Careline data dir; run `careline init` first")
        return self

    def settings(self, **overrides: Any) -> Settings:
        try:
            raw = tomllib.loads(self.settings_file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{self.path} is not a Careline data dir; run `careline init`") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.settings_file}: {exc}") from None
        return replace(parse_settings(raw, str(self.settings_file)),
                       **{k: v for k, v in overrides.items() if v not in (None, "")})

    def restrict_files(self) -> None:
        """careline.toml (may hold a database password), the SQLite database and its WAL,
        and local-admin.token (a full admin token) are the owner's only, whatever mode the
        folder has. Files made later inherit the process umask (077, see bootstrap)."""
        sqlite = str(self.sqlite_file)
        for path in (self.settings_file, self.local_token_file, Path(sqlite),
                     Path(sqlite + "-wal"), Path(sqlite + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, 0o600)

    def database_url(self, settings: Settings) -> str:
        return settings.database or f"sqlite:///{self.sqlite_file}"

    def write_settings(self, settings: Settings) -> None:
        """Written by a TOML library: a Windows path's backslashes stay what they are."""
        import tomli_w

        self.settings_file.write_text(tomli_w.dumps(asdict(settings)))
