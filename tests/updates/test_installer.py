"""Installer: switch, verify, roll back, crash anywhere, reinstall, running product."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from careline.agent.installer import Installer, InstallResult, ProductLayout
from careline.shared.errors import Conflict
from careline.shared.manifest import read_manifest, verify_tree
from careline.shared.trust import VerifiedPackage

from .conftest import CHECK_FAIL, CHECK_OK, instruction_for, make_package

DATA = {"company.db": "ledger rows", "2024/payroll.db": "salaries"}


class Crash(BaseException):
    """Stands in for kill -9: nothing in the installer may catch it."""


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


class Machine:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.layout = ProductLayout("acct", tmp / "Programs" / "Acct", data_subdir="Data")
        self.layout.install_dir.parent.mkdir(exist_ok=True)
        self.running = False
        self.started = 0

    def installer(self, hook: Callable[[str], None] | None = None,
                  stop: bool = True) -> Installer:
        def stop_product() -> None:
            self.running = False

        def start_product() -> None:
            self.started += 1

        return Installer(self.state, self.layout, lambda: self.running,
                         stop_product=stop_product if stop else None,
                         start_product=start_product, check_timeout=20, step_hook=hook)

    def install(self, version: str, action: str = "install", check: str | None = CHECK_OK,
                hook: Callable[[str], None] | None = None, **kwargs: object) -> InstallResult:
        package = make_package(self.tmp, version, check_script=check)
        instr = instruction_for(package, version, action=action, **kwargs)  # type: ignore[arg-type]
        return self.installer(hook).install(VerifiedPackage(package, instr))

    def add_data(self) -> None:
        for rel, text in DATA.items():
            path = self.layout.install_dir / "Data" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def siblings(self) -> list[str]:
        return sorted(p.name for p in self.layout.install_dir.parent.iterdir())


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    m = Machine(tmp_path)
    assert m.install("1.0.0").outcome == "installed"
    m.add_data()
    return m


def test_happy_path(machine: Machine) -> None:
    data_inode = (machine.layout.install_dir / "Data").stat().st_ino
    result = machine.install("1.1.0")
    assert result == InstallResult("job-1.1.0-install", "installed", "acct", "1.1.0")
    manifest = read_manifest(machine.layout.install_dir)
    assert manifest is not None
    assert manifest.version == "1.1.0"
    assert (machine.layout.install_dir / "bin/app.txt").read_text() == "app 1.1.0\n"
    assert snapshot(machine.layout.install_dir / "Data") == {k: v.encode() for k, v in
                                                             DATA.items()}
    assert (machine.layout.install_dir / "Data").stat().st_ino == data_inode
    assert machine.siblings() == ["Acct"]


def test_retried_job_reports_the_same_result(machine: Machine) -> None:
    first = machine.install("1.1.0")
    assert machine.install("1.1.0") == first


def test_failed_check_rolls_back(machine: Machine) -> None:
    before = snapshot(machine.layout.install_dir)
    result = machine.install("1.1.0", check=CHECK_FAIL)
    assert result.outcome == "rolled_back"
    assert result.version == "1.0.0"
    assert result.reason is not None
    assert "self-test failed" in result.reason
    assert snapshot(machine.layout.install_dir) == before
    assert machine.siblings() == ["Acct"]


def test_older_version_refused_but_reinstall_allowed(machine: Machine) -> None:
    assert machine.install("1.1.0").outcome == "installed"
    before = snapshot(machine.layout.install_dir)
    result = machine.install("1.0.0")
    assert result.outcome == "refused"
    assert "not newer" in (result.reason or "")
    # The same version again, intact: nothing to do, and that counts as installed.
    again = machine.install("1.1.0", job_id="again")
    assert (again.outcome, again.reason) == ("installed", "already installed and intact")
    assert snapshot(machine.layout.install_dir) == before
    # ... but a damaged copy of it is not "installed": that takes a reinstall.
    (machine.layout.install_dir / "bin/app.txt").write_text("damaged")
    assert machine.install("1.1.0", job_id="damaged").outcome == "refused"
    assert machine.install("1.0.0", action="reinstall").outcome == "installed"


def test_reinstall_restores_clean_copy_and_keeps_data(machine: Machine) -> None:
    clean = snapshot(machine.layout.install_dir)
    install = machine.layout.install_dir
    (install / "bin/app.txt").write_text("damaged by a virus")
    (install / "bin/dropper.exe").write_text("unknown")
    (install / "lib/tax-tables.txt").unlink()
    result = machine.install("1.0.0", action="reinstall")
    assert result.outcome == "installed"
    assert snapshot(install) == clean


def test_waits_for_running_product(machine: Machine) -> None:
    machine.running = True
    before = snapshot(machine.layout.install_dir)
    result = machine.install("1.1.0", stop_product=False)
    assert result.outcome == "waiting_for_product_exit"
    assert snapshot(machine.layout.install_dir) == before
    # Allowed to stop it: stops, installs, starts it again.
    assert machine.install("1.1.0", stop_product=True, job_id="j2").outcome == "installed"
    assert machine.started == 1


def test_package_for_another_product_refused(machine: Machine) -> None:
    package = make_package(machine.tmp, "2.0.0", product="payroll")
    instr = instruction_for(package, "2.0.0", product="payroll")
    result = machine.installer().install(VerifiedPackage(package, instr))
    assert result.outcome == "refused"


def test_package_writing_into_data_dir_refused(machine: Machine) -> None:
    package = make_package(machine.tmp, "1.1.0", files={"Data/company.db": "wiped"})
    instr = instruction_for(package, "1.1.0")
    before = snapshot(machine.layout.install_dir)
    result = machine.installer().install(VerifiedPackage(package, instr))
    assert result.outcome == "refused"
    assert "data directory" in (result.reason or "")
    assert snapshot(machine.layout.install_dir) == before


def test_first_install_without_previous(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    assert m.install("1.0.0", check=CHECK_FAIL).outcome == "rolled_back"
    assert not m.layout.install_dir.exists()
    assert m.install("1.0.0", job_id="j2").outcome == "installed"


# --- crash at every step ---------------------------------------------------------------


def _steps(tmp: Path, check: str) -> list[str]:
    seen: list[str] = []
    m = Machine(tmp)
    m.install("1.0.0")
    m.add_data()
    m.install("1.1.0", check=check, hook=seen.append)
    return seen


def _crash_at(step: str) -> Callable[[str], None]:
    def hook(name: str) -> None:
        if name == step:
            raise Crash(step)
    return hook


@pytest.mark.parametrize("check", [CHECK_OK, CHECK_FAIL], ids=["install", "rollback"])
def test_crash_at_every_step_recovers_whole_version(tmp_path: Path, check: str) -> None:
    steps = _steps(tmp_path / "probe", check)
    assert {"moved_old", "moved_data", "moved_new", "verifying"} <= set(steps)
    if check == CHECK_FAIL:
        assert {"rolling_back", "rb_moved_data", "rb_moved_new", "rb_restored"} <= set(steps)
    for i, step in enumerate(steps):
        m = Machine(tmp_path / f"crash-{i}-{step}")
        m.install("1.0.0")
        m.add_data()
        old = snapshot(m.layout.install_dir)
        with pytest.raises(Crash):
            m.install("1.1.0", check=check, hook=_crash_at(step))
        if step not in ("done", "rolled_back"):
            with pytest.raises(Conflict):
                m.install("1.2.0")  # nothing new starts before recovery
        result = m.installer().recover()
        now = snapshot(m.layout.install_dir)
        manifest = read_manifest(m.layout.install_dir)
        assert manifest is not None
        if manifest.version == "1.0.0":
            assert now == old, step
        else:
            assert manifest.version == "1.1.0", step
            assert check == CHECK_OK, step
            new = {**{f"Data/{k}": v.encode() for k, v in DATA.items()},
                   **{k: v for k, v in now.items() if not k.startswith("Data/")}}
            assert now == new
            assert verify_tree(m.layout.install_dir, manifest, frozenset({"Data"})) == []
        assert m.siblings() == ["Acct"], step
        # Only a crash after the outcome was journaled leaves nothing to report.
        assert (result is None) == (step in ("done", "rolled_back")), step
        assert m.installer().recover() is None


def test_crash_during_recovery_rollback(machine: Machine) -> None:
    old = snapshot(machine.layout.install_dir)
    with pytest.raises(Crash):
        machine.install("1.1.0", hook=_crash_at("moved_new"))
    with pytest.raises(Crash):
        machine.installer(_crash_at("rb_moved_new")).recover()
    result = machine.installer().recover()
    assert result is not None
    assert result.outcome == "rolled_back"
    assert snapshot(machine.layout.install_dir) == old
    assert machine.siblings() == ["Acct"]


def test_journal_is_durable_json(machine: Machine) -> None:
    journal = machine.state / "install-acct.json"
    assert journal.exists()
    assert b'"state":"done"' in journal.read_bytes()
    assert not [p for p in os.listdir(machine.state) if p.endswith(".tmp")]
