"""`careline notify ...`: channels, recipients, routes, customer opt-in and status."""

from __future__ import annotations

from typing import Any

import click

from careline.coordinator.cli_common import CarelineGroup, technician_command


@click.group(cls=CarelineGroup)
def notify() -> None:
    """Notifications: where events go (e-mail, webhooks, chat) and whether they arrive."""


@notify.group(cls=CarelineGroup)
def channels() -> None:
    """Ways to send: e-mail over SMTP, a signed webhook, or any apprise URL (Telegram, Zalo ...)."""


@technician_command(channels, "add")
@click.argument("name")
@click.option("--kind", type=click.Choice(["email", "webhook", "apprise"]), required=True)
@click.option("--host", default=None, help="SMTP server (email).")
@click.option("--port", type=int, default=None, help="SMTP port (default by --security).")
@click.option("--security", type=click.Choice(["starttls", "tls", "none"]), default=None,
              help="email: STARTTLS (default, port 587), implicit TLS (465) or none.")
@click.option("--username", default=None, help="SMTP login (email).")
@click.option("--password-env", default=None,
              help="Name of an environment variable holding the SMTP password.")
@click.option("--from", "from_addr", default=None, help="Sender address (email).")
@click.option("--smtp-ca", "ca_file", default=None,
              help="CA file (on the coordinator) to verify the SMTP server (default: system CAs).")
@click.option("--url", default=None,
              help="webhook: https://... to POST to; apprise: the service URL (kept secret).")
@click.option("--secret-env", default=None,
              help="webhook: environment variable with the signing secret (default: generated).")
@click.option("--rate", "rate_per_minute", type=int, default=30, show_default=True,
              help="At most this many messages a minute on this channel (0: no limit).")
def channels_add(client: Any, as_json: bool, name: str, kind: str, host: str | None,
                 port: int | None, security: str | None, username: str | None,
                 password_env: str | None, from_addr: str | None, ca_file: str | None,
                 url: str | None, secret_env: str | None, rate_per_minute: int) -> None:
    """Add a channel. Secrets come from environment variables, never the command line."""
    import os

    from careline.coordinator.render import emit

    def env(name: str | None) -> str | None:
        if name is None:
            return None
        if name not in os.environ:
            raise click.ClickException(f"environment variable {name} is not set")
        return os.environ[name]

    result = client.call("notify.channels.add", name=name, kind=kind, host=host, port=port,
                         security=security, username=username, password=env(password_env),
                         from_addr=from_addr, ca_file=ca_file, url=url, secret=env(secret_env),
                         rate_per_minute=rate_per_minute)
    secret = result.pop("webhook_secret", None)
    emit(result if not secret or not as_json else {**result, "webhook_secret": secret}, as_json)
    if secret and not as_json:
        click.echo("Webhook signing secret (shown once; give it to the receiver):")
        click.echo(f"  {secret}")


@technician_command(channels, "list")
def channels_list(client: Any, as_json: bool) -> None:
    from careline.coordinator.render import emit

    emit(client.call("notify.channels.list"), as_json,
         ("id", "name", "kind", "config", "secret", "rate_per_minute", "healthy", "failures"),
         title="notification channels")


@technician_command(channels, "remove")
@click.argument("name")
def channels_remove(client: Any, as_json: bool, name: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("notify.channels.remove", name=name), as_json)


@technician_command(channels, "test")
@click.argument("name")
@click.option("--to", "address", default="", help="Address to send to (email).")
def channels_test(client: Any, as_json: bool, name: str, address: str) -> None:
    """Send a test message now and say whether the channel took it."""
    from careline.coordinator.render import emit

    result = client.call("notify.channels.test", name=name, address=address)
    if as_json:
        emit(result, True)
    elif result["ok"]:
        click.echo(f"{name}: test message {result['delivery']} sent")
    else:
        raise click.ClickException(f"{name}: {result['error']}")


@notify.group(cls=CarelineGroup)
def recipients() -> None:
    """People (or rooms) that get notifications, each with a language and business hours."""


@technician_command(recipients, "add")
@click.argument("name")
@click.option("--channel", required=True)
@click.option("--address", default="", help="E-mail address (email channels).")
@click.option("--language", type=click.Choice(["vi", "en"]), default="vi", show_default=True)
@click.option("--timezone", default="Asia/Ho_Chi_Minh", show_default=True)
@click.option("--workdays", default="mon,tue,wed,thu,fri,sat", show_default=True)
@click.option("--opens", default="08:00", show_default=True, help="Quiet hours end (local).")
@click.option("--closes", default="17:30", show_default=True, help="Quiet hours begin (local).")
@click.option("--technician", default=None, help="Technician whose visits the digest lists.")
def recipients_add(client: Any, as_json: bool, **params: Any) -> None:
    from careline.coordinator.render import emit

    emit(client.call("notify.recipients.add", **params), as_json)


@technician_command(recipients, "list")
def recipients_list(client: Any, as_json: bool) -> None:
    from careline.coordinator.render import emit

    emit(client.call("notify.recipients.list"), as_json,
         ("id", "name", "channel", "address", "language", "timezone", "workdays", "opens",
          "closes", "customer", "technician"), title="recipients")


@technician_command(recipients, "remove")
@click.argument("name")
def recipients_remove(client: Any, as_json: bool, name: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("notify.recipients.remove", name=name), as_json)


@notify.group(cls=CarelineGroup)
def routes() -> None:
    """Which events go to whom: by event, customer, severity and incident kind."""


@technician_command(routes, "add")
@click.option("--recipient", required=True)
@click.option("--events", default="*", show_default=True,
              help="Comma list (incident.opened,visit.created,...) or *; `notify events` lists them.")
@click.option("--customer", default=None, help="Only this customer's events.")
@click.option("--min-severity", type=click.Choice(["low", "medium", "high", "critical"]),
              default="low", show_default=True)
@click.option("--kinds", default="", help="Only these incident kinds (disk_failing,...).")
def routes_add(client: Any, as_json: bool, **params: Any) -> None:
    from careline.coordinator.render import emit

    emit(client.call("notify.routes.add", **params), as_json)


@technician_command(routes, "list")
def routes_list(client: Any, as_json: bool) -> None:
    from careline.coordinator.render import emit

    emit(client.call("notify.routes.list"), as_json,
         ("id", "recipient", "events", "customer", "min_severity", "kinds"), title="routes")


@technician_command(routes, "remove")
@click.argument("route", type=int)
def routes_remove(client: Any, as_json: bool, route: int) -> None:
    from careline.coordinator.render import emit

    emit(client.call("notify.routes.remove", id=route), as_json)


@technician_command(notify, "optin")
@click.argument("customer")
@click.option("--channel", required=True)
@click.option("--address", required=True, help="The customer's contact address.")
@click.option("--language", type=click.Choice(["vi", "en"]), default="vi", show_default=True)
@click.option("--events", default="coverage.ending,report.care_monthly,update.installed,visit.created",
              show_default=True)
def optin(client: Any, as_json: bool, customer: str, channel: str, address: str, language: str,
          events: str) -> None:
    """A customer's contact hears of visits, installed updates, coverage ending, and gets the
    monthly care report."""
    from careline.coordinator.render import emit

    emit(client.call("notify.customers.optin", customer=customer, channel=channel,
                     address=address, language=language, events=events), as_json)


@notify.command("events")
def events() -> None:
    """Every event a route can name."""
    from careline.coordinator.notify.policy import EVENTS

    for name, meaning in EVENTS.items():
        click.echo(f"{name:26} {meaning}")


@technician_command(notify, "status")
def status(client: Any, as_json: bool) -> None:
    """Each channel's health and backlog; unhealthy channels are named."""
    from careline.coordinator.render import emit

    result = client.call("notify.status")
    if as_json:
        emit(result, True)
        return
    emit(result["channels"], False, ("channel", "kind", "healthy", "failures", "pending", "sent",
                                     "dead", "in_digest", "oldest_pending_seconds", "last_error"),
         title="notification channels")
    if result["unhealthy"]:
        raise click.ClickException(f"unhealthy channels: {', '.join(result['unhealthy'])}")


@technician_command(notify, "list")
@click.option("--status", "state", default=None,
              type=click.Choice(["pending", "sending", "sent", "dead", "digest", "digested"]))
@click.option("--limit", default=50, show_default=True)
def list_(client: Any, as_json: bool, state: str | None, limit: int) -> None:
    """The outbox, newest first."""
    from careline.coordinator.render import emit

    emit(client.call("notify.list", status=state, limit=limit), as_json,
         ("id", "event", "recipient", "channel", "status", "attempts", "created_at", "sent_at",
          "delivery", "last_error"), title="notifications")
