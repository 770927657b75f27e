"""`careline`: the coordinator server and the technicians' CLI.

Imports are deferred to the command that needs them, so `careline agents list` starts
without loading the database layer or the server.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from shared.errors import CarelineError


class CarelineGroup(click.Group):
    """Turns every CarelineError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CarelineError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=CarelineGroup)
@click.version_option(package_name="careline")
def main() -> None:
    """Careline coordinator: serve agents and manage the fleet."""


data_option = click.option(
    "--data", envvar="CARELINE_DATA", default=None,
    help="Data directory (default ./careline-data or $CARELINE_DATA).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def technician_command(group: click.Group, name: str, **kwargs: Any) -> Callable[..., Any]:
    """A command that talks to the running coordinator with a technician token."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @group.command(name, **kwargs)
        @click.option("--server", default=None, help="wss://HOST:PORT ($CARELINE_SERVER).")
        @click.option("--token", default=None, help="Technician token ($CARELINE_TOKEN).")
        @click.option("--ca", default=None, help="Coordinator CA file to pin ($CARELINE_CA).")
        @data_option
        @json_option
        @functools.wraps(fn)
        def command(
            server: str | None, token: str | None, ca: str | None, data: str | None,
            as_json: bool, **params: Any,
        ) -> None:
            from coordinator.client import AdminClient, resolve_credentials

            with AdminClient(resolve_credentials(server, token, ca, data)) as client:
                fn(client, as_json, **params)

        return command

    return decorate


# ============================================================================ server side
@main.command()
@data_option
@click.option("--hostname", "hostnames", multiple=True,
              help="Name or IP agents use to reach the coordinator (repeatable).")
@click.option("--listen", default=None, help="HOST:PORT to serve on (default 127.0.0.1:8443).")
@click.option("--database", default=None, help="postgresql://... instead of the SQLite file.")
@click.option("--public-url", default=None, help="wss://HOST:PORT put in join strings.")
@click.option("--heartbeat-interval", type=float, default=None, help="Seconds (default 30).")
@json_option
def init(
    data: str | None, hostnames: tuple[str, ...], listen: str | None, database: str | None,
    public_url: str | None, heartbeat_interval: float | None, as_json: bool,
) -> None:
    """Create a data directory: database, private CA, server certificate, admin token."""
    from coordinator.bootstrap import initialise

    result = initialise(
        data, list(hostnames) or ["localhost", "127.0.0.1"], listen=listen, database=database,
        public_url=public_url, heartbeat_interval=heartbeat_interval,
    )
    if as_json:
        from coordinator.render import emit

        emit(result, True)
        return
    click.echo(f"Initialised {result['data']}")
    click.echo(f"CA fingerprint: {result['ca_fingerprint']}")
    click.echo("Admin technician token (shown once, store it safely):")
    click.echo(f"  {result['admin_token']}")
    click.echo(f"Start the coordinator with: careline serve --data {result['data']}")


@main.command()
@data_option
@click.option("--listen", default=None, help="HOST:PORT (overrides the data dir's setting).")
@click.option("--database", default=None, help="postgresql://... (overrides the setting).")
@click.option("-v", "--verbose", is_flag=True, help="Log every connection.")
def serve(data: str | None, listen: str | None, database: str | None, verbose: bool) -> None:
    """Run the coordinator (websockets over TLS) until stopped."""
    from coordinator.bootstrap import serve_forever

    serve_forever(data, listen=listen, database=database, verbose=verbose)


# ============================================================================ customers
@main.group(cls=CarelineGroup)
def customers() -> None:
    """Customers (companies using the vendor's software)."""


@technician_command(customers, "add")
@click.argument("name")
@click.option("--timezone", default="Asia/Ho_Chi_Minh", show_default=True)
def customers_add(client: Any, as_json: bool, name: str, timezone: str) -> None:
    from coordinator.render import emit

    emit(client.call("customers.add", name=name, timezone=timezone), as_json)


@technician_command(customers, "list")
def customers_list(client: Any, as_json: bool) -> None:
    from coordinator.render import emit

    emit(client.call("customers.list"), as_json, title="customers")


# ============================================================================ tokens
@main.group(cls=CarelineGroup)
def tokens() -> None:
    """Enrollment tokens for installing agents at a customer."""


@technician_command(tokens, "create")
@click.option("--customer", required=True, help="Customer id or name.")
@click.option("--uses", default=1, show_default=True, help="How many machines may enroll.")
@click.option("--expires", default="24h", show_default=True, help="Lifetime, e.g. 30m, 24h, 7d.")
def tokens_create(client: Any, as_json: bool, customer: str, uses: int, expires: str) -> None:
    from shared.units import parse_duration

    seconds = parse_duration(expires).total_seconds()
    result = client.call("tokens.create", customer=customer, uses=uses, expires_seconds=seconds)
    if as_json:
        from coordinator.render import emit

        emit(result, True)
    else:
        click.echo(result["join"])


# ============================================================================ agents
@main.group(cls=CarelineGroup)
def agents() -> None:
    """Enrolled customer machines."""


@technician_command(agents, "list")
@click.option("--customer", default=None, help="Only this customer's machines.")
def agents_list(client: Any, as_json: bool, customer: str | None) -> None:
    from coordinator.api.fleet import AGENT_LIST_FIELDS
    from coordinator.render import emit

    rows = client.call("agents.list", customer=customer)
    if not as_json:
        for row in rows:
            row["products"] = ", ".join(
                f"{name} {info['version'] or '?'}{' (running)' if info['running'] else ''}"
                for name, info in row["products"].items()
            )
    emit(rows, as_json, AGENT_LIST_FIELDS, title="agents")


@technician_command(agents, "show")
@click.argument("agent")
def agents_show(client: Any, as_json: bool, agent: str) -> None:
    from coordinator.render import emit

    emit(client.call("agents.show", id=agent), as_json)


@technician_command(agents, "revoke")
@click.argument("agent")
def agents_revoke(client: Any, as_json: bool, agent: str) -> None:
    from coordinator.render import emit

    emit(client.call("agents.revoke", id=agent), as_json)


# ============================================================================ technicians
@main.group(cls=CarelineGroup)
def technicians() -> None:
    """Technician accounts and their tokens."""


@technician_command(technicians, "add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "technician", "admin"]), required=True)
def technicians_add(client: Any, as_json: bool, name: str, role: str) -> None:
    result = client.call("technicians.add", name=name, role=role)
    if as_json:
        from coordinator.render import emit

        emit(result, True)
    else:
        click.echo(f"Technician {name} ({role}) token, shown once:")
        click.echo(f"  {result['token']}")


@technician_command(technicians, "list")
def technicians_list(client: Any, as_json: bool) -> None:
    from coordinator.render import emit

    emit(client.call("technicians.list"), as_json, title="technicians")


@technician_command(technicians, "revoke")
@click.argument("name")
def technicians_revoke(client: Any, as_json: bool, name: str) -> None:
    from coordinator.render import emit

    emit(client.call("technicians.revoke", name=name), as_json)


# ============================================================================ audit
@technician_command(main, "audit")
@click.option("--limit", default=50, show_default=True)
def audit(client: Any, as_json: bool, limit: int) -> None:
    """Every recorded action, newest first, with who did it."""
    from coordinator.render import emit

    emit(client.call("audit.list", limit=limit), as_json,
         ["at", "actor", "action", "target", "detail"], title="audit")


if __name__ == "__main__":
    sys.exit(main())
