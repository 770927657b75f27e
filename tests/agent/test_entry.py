"""agent.entry: `careline-agent run` starts without click, python-tuf or cryptography, and its
tiny argv parser accepts exactly what the click `run` command documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from careline.agent.entry import STATE_ENV, parse_run_argv
from careline.shared.keys import generate_key, save_private_key


@pytest.mark.parametrize(("argv", "expected"), [
    (["run"], (None, False)),
    (["run", "--state", "/s"], ("/s", False)),
    (["run", "--state=/s", "-v"], ("/s", True)),
    (["run", "--verbose", "--state", "/a", "--state", "/b"], ("/b", True)),
    # everything else is click's business (help, typos, other commands, a missing value)
    (["run", "--help"], None),
    (["run", "--state"], None),
    (["run", "--state="], None),
    (["run", "-x"], None),
    (["run", "extra"], None),
    (["status"], None),
    ([], None),
    (["--version"], None),
])
def test_parse_run_argv(argv: list[str], expected: tuple[str | None, bool] | None,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STATE_ENV, raising=False)
    assert parse_run_argv(argv) == expected


def test_state_from_environment_like_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STATE_ENV, "/env")
    assert parse_run_argv(["run"]) == ("/env", False)
    assert parse_run_argv(["run", "--state", "/flag"]) == ("/flag", False)


def test_fast_parser_knows_every_option_of_the_click_run_command() -> None:
    from careline.agent.cli import main

    run = main.commands["run"]
    options = {opt for param in run.params for opt in param.opts}
    assert options == {"--state", "-v", "--verbose"}
    state = next(param for param in run.params if param.name == "state")
    assert state.envvar == STATE_ENV


def test_run_path_does_not_import_click_tuf_or_cryptography(tmp_path: Path) -> None:
    """What `careline-agent run` imports before and while connecting (the updater included,
    since the runner creates it at start to recover interrupted installs)."""
    save_private_key(generate_key(), tmp_path / "agent.key")
    code = (
        "import sys, json, pathlib\n"
        "import careline.agent.entry, careline.agent.runner, careline.agent.updater\n"
        "from careline.agent.signer import load_signer\n"
        "load_signer(pathlib.Path(sys.argv[1])).sign(b'challenge')\n"
        "heavy = ('click', 'tuf', 'cryptography', 'careline.shared.trust', 'careline.shared.package')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "agent.key")],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
