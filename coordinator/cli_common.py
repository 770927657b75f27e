"""What every `careline` command group shares: error handling and the technician options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from careline.shared.errors import CarelineError


class CarelineGroup(click.Group):
    """Turns every CarelineError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CarelineError as exc:
            raise click.ClickException(str(exc)) from None


data_option = click.option(
    "--data", envvar="CARELINE_DATA", default=None,
    help="Data directory (default ./careline-data or $CARELINE_DATA).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def technician_command(
    group: click.Group, name: str, timeout: float = 30.0, **kwargs: Any
) -> Callable[..., Any]:
    """A command that talks to the running coordinator with a technician token; the
    decorated function gets (client, as_json, **its own options)."""

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
            from careline.coordinator.client import AdminClient, resolve_credentials

            with AdminClient(resolve_credentials(server, token, ca, data), timeout) as client:
                fn(client, as_json, **params)

        return command

    return decorate
