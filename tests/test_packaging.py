"""Careline installs as one package: careline.agent, careline.coordinator, careline.shared.

The slow test builds the wheel and sdist with `python -m build`, installs the wheel (not the
source tree) into fresh virtual environments outside the repository, and enrolls an agent from
the agent-only install against a coordinator from the `[coordinator]` install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
COORDINATOR_ONLY = ("sqlalchemy", "asyncpg", "aiosqlite", "alembic", "rich", "holidays", "jinja2")


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        "careline." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("agent", "coordinator", "shared")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == on_disk


def _venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def _run(argv: list[str | Path], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.slow
def test_built_wheel_installs_apart_and_enrolls_an_agent(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=tmp_path)
    banners = [line for line in (built.stdout + built.stderr).splitlines()
               if "Warning:" in line or line.strip() == "!!"]
    assert not banners, built.stdout + built.stderr
    wheels = list(dist.glob("careline-*.whl"))
    assert len(wheels) == 1
    assert list(dist.glob("careline-*.tar.gz"))
    wheel = wheels[0]
    version = wheel.name.split("-")[1]

    # The agent alone: no coordinator libraries, nothing importable under a bare name.
    agent_bin = _venv(tmp_path / "agent-venv")
    _run([agent_bin / "pip", "install", "--quiet", wheel], cwd=tmp_path)
    installed = {line.split("==")[0].lower()
                 for line in _run([agent_bin / "pip", "freeze"], cwd=tmp_path).stdout.split()}
    assert not installed & set(COORDINATOR_ONLY), installed & set(COORDINATOR_ONLY)
    assert version in _run([agent_bin / "careline-agent", "--version"], cwd=tmp_path).stdout
    assert "enroll" in _run([agent_bin / "careline-agent", "--help"], cwd=tmp_path).stdout
    for bare in ("agent", "coordinator", "shared"):
        probe = _run([agent_bin / "python", "-c", f"import {bare}"], cwd=tmp_path, check=False)
        assert probe.returncode != 0, bare
        assert "ModuleNotFoundError" in probe.stderr, bare

    # The coordinator from the same wheel, with its extra.
    coord_bin = _venv(tmp_path / "coordinator-venv")
    _run([coord_bin / "pip", "install", "--quiet", f"{wheel}[coordinator]"], cwd=tmp_path)
    assert version in _run([coord_bin / "careline", "--version"], cwd=tmp_path).stdout
    data, port = tmp_path / "data", free_port()
    _run([coord_bin / "careline", "init", "--data", data, "--listen", f"127.0.0.1:{port}"], cwd=tmp_path)
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([coord_bin / "careline", "serve", "--data", data, "-v"], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server)
        _run([coord_bin / "careline", "customers", "add", "Wheel Co", "--data", data], cwd=tmp_path)
        token = json.loads(_run([coord_bin / "careline", "tokens", "create", "--customer", "Wheel Co",
                                 "--data", data, "--json"], cwd=tmp_path).stdout)
        enrolled = _run([agent_bin / "careline-agent", "enroll", token["join"],
                         "--state", tmp_path / "state"], cwd=tmp_path)
        assert "Enrolled as " in enrolled.stdout
        listed = json.loads(_run([coord_bin / "careline", "agents", "list", "--data", data, "--json"],
                                 cwd=tmp_path).stdout)
        assert [a["agent_version"] for a in listed] == [version]
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    assert f"Careline {version} coordinator starting" in (tmp_path / "serve.log").read_text()
