"""`careline-agent`: enroll this machine, run the agent, show its status."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from careline.shared.errors import CarelineError, ConfigError


class AgentError(click.ClickException):
    """One line on stderr and the documented exit code (careline.agent.entry.exit_code)."""

    def __init__(self, error: CarelineError) -> None:
        from careline.agent.entry import exit_code

        super().__init__(str(error))
        setattr(self, "exit_code", exit_code(error))  # noqa: B010 (a ClassVar in click's stubs)


class AgentGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CarelineError as exc:
            raise AgentError(exc) from None


def _state(state: str | None, *, secure: bool = True) -> Any:
    """The state dir; unless only read (`status`), refused when others own or can write it."""
    from careline.agent.platform import default_state_dir, secure_state_dir
    from careline.agent.state import StateDir

    state_dir = StateDir(Path(state).resolve() if state else default_state_dir())
    if secure and state_dir.enrolled():
        secure_state_dir(state_dir.path)
    return state_dir


state_option = click.option(
    "--state", envvar="CARELINE_AGENT_STATE", default=None,
    help="Agent state directory (default: per-OS system location).",
)


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{option} expects NAME=VALUE, got {value!r}")
        pairs[name] = rest
    return pairs


@click.group(cls=AgentGroup)
@click.version_option(package_name="careline")
def main() -> None:
    """Careline agent: keeps this PC's business software healthy and up to date."""


def _read_join(join_string: str | None, join_file: str | None) -> str:
    """The join string from the argument, stdin (`-`) or --join-file: the last two keep the
    token out of the process list and shell history."""
    if join_file is not None and join_string not in (None, "-"):
        raise ConfigError("give the join string either as an argument or with --join-file")
    try:
        if join_file is not None:
            return Path(join_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {join_file}: {exc.strerror}") from None
    if join_string == "-":
        return sys.stdin.readline().strip()
    if join_string is None:
        raise ConfigError("no join string: pass it, `-` to read it from stdin, or --join-file")
    return join_string


@main.command()
@click.argument("join_string", required=False, envvar="CARELINE_JOIN")
@click.option("--join-file", type=click.Path(dir_okay=False), default=None,
              help="Read the join string from this file (or pass `-` to read stdin).")
@state_option
@click.option("--product", "products", multiple=True, metavar="NAME=INSTALL_DIR",
              help="A product to watch (repeatable).")
@click.option("--product-exec", "execs", multiple=True, metavar="NAME=PROGRAM",
              help="How to start a product again (path relative to its install dir).")
@click.option("--product-service", "services", multiple=True, metavar="NAME=SERVICE",
              help="The product runs as this service (systemd unit / Windows service).")
@click.option("--product-data", "datas", multiple=True, metavar="NAME=DIR",
              help="Top-level folder in the install dir with customer data: never touched.")
@click.option("--product-log", "logs", multiple=True, metavar="NAME=FILE",
              help="The product's log file (relative to its install dir), for diagnostics.")
@click.option("--replaces", default="", metavar="MACHINE",
              help="This is a reinstall of that machine (id or hostname): keep its history.")
@click.option("--proxy", default=None, metavar="URL",
              help="Reach the coordinator through this proxy (http://host:port, socks5://...), "
                   "or 'direct'; default: the OS / HTTPS_PROXY settings. Kept for `run`.")
@click.option("--service", "as_service", is_flag=True,
              help="Then install and start the agent as a system service (root/Administrator).")
def enroll(join_string: str | None, join_file: str | None, state: str | None,
           products: tuple[str, ...],
           execs: tuple[str, ...], services: tuple[str, ...], datas: tuple[str, ...],
           logs: tuple[str, ...], replaces: str, proxy: str | None, as_service: bool) -> None:
    """Register this machine with the coordinator named in JOIN_STRING (`-`: stdin; or
    $CARELINE_JOIN)."""
    import shlex

    from careline.agent.enroll import enroll as do_enroll
    from careline.agent.state import ProductConfig
    from careline.shared.keys import JoinString

    if as_service:  # before the token is spent
        from careline.agent.platform import require_admin

        require_admin()
    join = JoinString.parse(_read_join(join_string, join_file))
    install_dirs = _pairs(products, "--product")
    extras = {
        "--product-exec": _pairs(execs, "--product-exec"),
        "--product-service": _pairs(services, "--product-service"),
        "--product-data": _pairs(datas, "--product-data"),
        "--product-log": _pairs(logs, "--product-log"),
    }
    for option, values in extras.items():
        unknown = set(values) - set(install_dirs)
        if unknown:
            raise ConfigError(f"{option} names {sorted(unknown)}, not given with --product")
    configs = [
        ProductConfig(
            name=name, install_dir=str(Path(directory).resolve()),
            executable=shlex.split(extras["--product-exec"][name])
            if name in extras["--product-exec"] else None,
            service=extras["--product-service"].get(name),
            expect_running=name in extras["--product-service"],
            data_dir=extras["--product-data"].get(name),
            log_file=extras["--product-log"].get(name),
        )
        for name, directory in install_dirs.items()
    ]
    state_dir = _state(state)
    config = asyncio.run(do_enroll(join, state_dir, configs, replaces, proxy=proxy))
    click.echo(f"Enrolled as {config.agent_id} (customer {config.customer_id}).")
    if not join.root_pin:
        click.echo("No update root pinned (join string made before release keys existed): "
                   "updates are refused until `careline-agent pin-root HASH`.")
    if as_service:
        _install_service(state_dir)
    else:
        click.echo(f"Start the agent with: careline-agent run --state {state_dir.path}")


@main.command()
@state_option
@click.option("-v", "--verbose", is_flag=True, help="Log to the terminal too.")
def run(state: str | None, verbose: bool) -> None:
    """Connect and report until stopped (SIGTERM/Ctrl-C stop it cleanly)."""
    # `careline-agent run` normally starts in careline.agent.entry without click at all.
    from careline.agent.entry import run_agent

    sys.exit(run_agent(state, verbose))


@main.command()
@state_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(state: str | None, as_json: bool) -> None:
    """Enrollment, coordinator, connection state and last report."""
    state_dir = _state(state, secure=False)
    info: dict[str, Any] = {"state_dir": str(state_dir.path), "enrolled": state_dir.enrolled()}
    if state_dir.enrolled():
        config = state_dir.load_config()
        info.update(agent_id=config.agent_id, customer_id=config.customer_id,
                    coordinator=config.server_url,
                    products=[p.name for p in config.products])
        info["connection"] = state_dir.read_json(state_dir.status_file) or {"state": "never run"}
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        click.echo(f"{key:12} {value}")


@main.command("pin-root")
@click.argument("root_hash")
@state_option
def pin_root(root_hash: str, state: str | None) -> None:
    """Trust the vendor's update root with this hash (printed by `careline release keys
    init`). Needed once by agents enrolled before the vendor had release keys."""
    from careline.agent.updater import pin_root as do_pin

    state_dir = _state(state)
    state_dir.load_config()  # enrolled?
    do_pin(state_dir, root_hash)
    click.echo(f"Update root pinned: {root_hash.strip().lower()}")


def _install_service(state_dir: Any) -> None:
    from careline.agent import platform as osx
    from careline.agent.service import program_path, service_spec

    osx.require_admin()
    spec = service_spec(state_dir, state_dir.load_config(), program=program_path(),
                        verb="service-host" if osx.IS_WINDOWS else "run")
    manager = osx.service_manager()
    manager.install(spec)
    manager.start(spec.name)
    click.echo(f"Service {spec.name} installed and started: {' '.join(spec.command)}")


@main.group(cls=AgentGroup)
def service() -> None:
    """Run the agent as a system service (systemd unit / Windows service); needs root/Administrator."""


@service.command("install")
@state_option
def service_install(state: str | None) -> None:
    """Install the service for this state dir (enrolled first), enable and start it."""
    _install_service(_state(state))


@service.command("uninstall")
def service_uninstall() -> None:
    """Stop and remove the service (the state dir and enrollment stay)."""
    from careline.agent import platform as osx
    from careline.agent.service import SERVICE_NAME

    osx.require_admin()
    osx.service_manager().uninstall(SERVICE_NAME)
    click.echo(f"Service {SERVICE_NAME} removed.")


@service.command("start")
def service_start() -> None:
    """Start the installed service."""
    from careline.agent import platform as osx
    from careline.agent.service import SERVICE_NAME

    osx.require_admin()
    osx.service_manager().start(SERVICE_NAME)


@service.command("stop")
def service_stop() -> None:
    """Stop the service (it starts again at boot)."""
    from careline.agent import platform as osx
    from careline.agent.service import SERVICE_NAME

    osx.require_admin()
    osx.service_manager().stop(SERVICE_NAME)


@service.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def service_status(as_json: bool) -> None:
    """Whether the service is installed and running."""
    from careline.agent import platform as osx
    from careline.agent.service import SERVICE_NAME

    info = {"service": SERVICE_NAME, **osx.service_manager().status(SERVICE_NAME)}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key:10} {value}")


@main.command("apply-bundle")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@state_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def apply_bundle(bundle: str, state: str | None, as_json: bool) -> None:
    """Install an update bundle from physical media, with no network (issue 6)."""
    from careline.agent.updater import apply_bundle as do_apply

    result = do_apply(_state(state), Path(bundle))
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(f"{result['product']}: {result['outcome']}"
                   + (f" ({result['version']})" if result["version"] else "")
                   + (f": {result['reason']}" if result["reason"] else ""))
    if result["outcome"] != "installed":
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
