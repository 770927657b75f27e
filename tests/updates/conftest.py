"""A release repository, a coordinator and an agent state dir, all in tmp_path."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from careline.shared.instruction import Instruction
from careline.shared.package import build_package
from careline.shared.trust import (
    AgentTrust,
    OnlineRepository,
    init_release_keys,
    install_trusted_root,
    sign_targets,
    target_for_package,
    target_path,
)

CHECK_OK = "import sys; sys.exit(0)\n"
CHECK_FAIL = "import sys; print('self-test failed'); sys.exit(3)\n"


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def make_package(tmp: Path, version: str, files: dict[str, str] | None = None,
                 check_script: str | None = None, product: str = "acct") -> Path:
    """A package of `product` at `version`; with `check_script` it carries check.py."""
    src = tmp / f"src-{product}-{version}-{len(list(tmp.glob('src-*')))}"
    contents = dict(files or {
        "bin/app.txt": f"app {version}\n",
        "lib/tax-tables.txt": f"tables {version}\n",
    })
    check = None
    if check_script is not None:
        contents["check.py"] = check_script
        check = [sys.executable, "check.py"]
    write_tree(src, contents)
    out = tmp / "packages"
    out.mkdir(exist_ok=True)
    return build_package(src, out, product, version, "bugfix", check=check,
                         notes=f"release {version}")


def instruction_for(package: Path, version: str, *, machine_id: str = "m1",
                    action: str = "install", job_id: str | None = None,
                    stop_product: bool = False, product: str = "acct",
                    now: datetime | None = None) -> Instruction:
    data = package.read_bytes()
    now = now or datetime.now(UTC)
    return Instruction(
        job_id=job_id or f"job-{version}-{action}",
        machine_id=machine_id, product=product, version=version,
        target=target_path(product, version), sha256=hashlib.sha256(data).hexdigest(),
        length=len(data), action=action,  # type: ignore[arg-type]
        stop_product=stop_product, issued_at=now, expires_at=now + timedelta(hours=1),
    )


@dataclass
class Release:
    tmp: Path
    keys: Path
    repo: OnlineRepository
    agent_state: Path
    instruction_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def publish(self, version: str, check_script: str | None = None,
                now: datetime | None = None) -> Path:
        """Build, sign (release machine) and publish (coordinator) one package."""
        package = make_package(self.tmp, version, check_script=check_script)
        targets = sign_targets(self.keys, self.repo.current_targets(),
                               [target_for_package(package)], now=now)
        self.repo.publish(targets=targets, now=now)
        return package

    def trust(self, fetch: Callable[[str], bytes | None] | None = None) -> AgentTrust:
        return AgentTrust(self.agent_state, fetch or self.repo.read_metadata)


@pytest.fixture
def release(tmp_path: Path) -> Release:
    repo = OnlineRepository(tmp_path / "coordinator" / "releases")
    metadata = init_release_keys(tmp_path / "release-keys", repo.online_public_keys())
    repo.publish(root=metadata.root, targets=metadata.targets)
    agent_state = tmp_path / "agent-state"
    install_trusted_root(agent_state, repo.enrollment_root())
    return Release(tmp_path, tmp_path / "release-keys", repo, agent_state)
