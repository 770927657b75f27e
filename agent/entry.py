"""The `careline-agent` process entry point: `run` starts without importing click.

The agent spends its life in `run`; every module it imports stays in memory for as long as
the PC is on. So `careline-agent run [--state DIR] [-v]` is recognised here by a tiny argv
parser and goes straight to the runner; everything else (enroll, status, service, `run
--help`, ...) goes through the click CLI in `careline.agent.cli`, which also documents
`run`'s options. `tests/test_agent_entry.py` checks that both accept the same options.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

STATE_ENV = "CARELINE_AGENT_STATE"

# Exit codes of every careline-agent command, for unattended installs (README lists them).
EXIT_OK = 0
EXIT_ERROR = 1  # anything else: a bad state dir, a failed install step, ...
EXIT_USAGE = 2  # click: unknown option, missing argument
EXIT_REFUSED = 3  # refused: token invalid, used up or expired; agent revoked; wrong CA pinned
EXIT_UNREACHABLE = 4  # the coordinator could not be reached (retry later)
EXIT_NOT_ADMIN = 5  # `service ...` and `enroll --service` need root / Administrator
EXIT_RESTART = 75  # `run` after a self-update's switch: the service manager starts it again


def exit_code(error: BaseException) -> int:
    """The documented exit code for a CarelineError."""
    from careline.shared.errors import AuthError, PermissionDenied, Unreachable

    if isinstance(error, AuthError):
        return EXIT_REFUSED
    if isinstance(error, Unreachable):
        return EXIT_UNREACHABLE
    if isinstance(error, PermissionDenied):
        return EXIT_NOT_ADMIN
    return EXIT_ERROR


def parse_run_argv(argv: list[str], verb: str = "run") -> tuple[str | None, bool] | None:
    """(state, verbose) when `argv` is a plain `run` invocation, else None (use click).
    `service-host` (what the Windows service manager starts) takes the same options.

    Accepts exactly what the click `run` command accepts: `--state DIR`, `--state=DIR`,
    `-v`, `--verbose`; anything else (help, typos) is left to click's own messages.
    """
    if not argv or argv[0] != verb:
        return None
    state, verbose = os.environ.get(STATE_ENV) or None, False
    rest = argv[1:]
    while rest:
        arg = rest.pop(0)
        if arg in ("-v", "--verbose"):
            verbose = True
        elif arg == "--state" and rest:
            state = rest.pop(0)
        elif arg.startswith("--state=") and arg != "--state=":
            state = arg.removeprefix("--state=")
        else:
            return None
    return state, verbose


def run_agent(state: str | None, verbose: bool,
              on_start: Callable[[Callable[[], None]], None] | None = None) -> int:
    """Connect and report until SIGTERM/Ctrl-C stops the agent, or the function handed to
    `on_start` is called (from any thread: the Windows service's stop request). Returns the
    exit code: EXIT_RESTART when a self-update hands over to the new program."""
    import asyncio
    import contextlib
    import logging
    import logging.handlers
    import signal

    from careline.agent.platform import default_state_dir, secure_state_dir
    from careline.agent.runner import AgentRunner
    from careline.agent.state import StateDir
    from careline.shared.logs import use_safe_formatter

    state_dir = StateDir(Path(state).resolve() if state else default_state_dir())
    if state_dir.enrolled():  # refused when others own or can write it
        secure_state_dir(state_dir.path)
    config = state_dir.load_config()
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(state_dir.log_file, maxBytes=1 << 20, backupCount=3)
    ]
    if verbose:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(
        level=logging.INFO, handlers=handlers,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    use_safe_formatter()  # agents and clients choose some of what is logged
    logging.getLogger("websockets").setLevel(logging.WARNING)

    async def main_loop() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows; not main thread
                loop.add_signal_handler(signum, stop.set)
        if on_start is not None:

            def stop_soon() -> None:
                loop.call_soon_threadsafe(stop.set)

            on_start(stop_soon)
        runner = AgentRunner(state_dir, config)
        await runner.run(stop)
        return runner.exit_code

    try:
        return asyncio.run(main_loop())
    except KeyboardInterrupt:
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fast = parse_run_argv(args)
    watchdog = parse_run_argv(args, "watchdog")
    if watchdog is not None:  # started by a self-update's hand-over, from the previous program
        from careline.agent.selfupdate import run_watchdog

        return run_watchdog(watchdog[0])
    host = parse_run_argv(args, "service-host")
    if host is not None:
        from careline.agent.platform import windows_service_host

        windows_service_host(host[0])
        return EXIT_OK
    if fast is None:
        from careline.agent.cli import main as click_main

        return int(click_main(args) or 0)
    from careline.shared.errors import CarelineError

    try:
        return run_agent(*fast)
    except CarelineError as exc:  # the same one line click prints
        print(f"Error: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
