"""`careline`: the coordinator server and the technicians' CLI.

Imports are deferred to the command that needs them, so `careline agents list` starts
without loading the database layer or the server.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from careline.coordinator.cli_common import CarelineGroup, data_option, json_option, technician_command


@click.group(cls=CarelineGroup)
@click.version_option(package_name="careline")
def main() -> None:
    """Careline coordinator: serve agents and manage the fleet."""


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
    from careline.coordinator.bootstrap import initialise

    result = initialise(
        data, list(hostnames) or ["localhost", "127.0.0.1"], listen=listen, database=database,
        public_url=public_url, heartbeat_interval=heartbeat_interval,
    )
    if as_json:
        from careline.coordinator.render import emit

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
@click.option("--policy", default=None, help="Vendor policy TOML merged over the defaults.")
@click.option("--web", default=None, help="HOST:PORT for the web console and REST API (HTTPS).")
@click.option("--health-listen", default=None,
              help="HOST:PORT answering a load balancer's health checks (plain HTTP, GET /health).")
@click.option("-v", "--verbose", is_flag=True, help="Log every connection.")
def serve(data: str | None, listen: str | None, database: str | None, policy: str | None,
          web: str | None, health_listen: str | None, verbose: bool) -> None:
    """Run the coordinator (websockets over TLS) until stopped."""
    from careline.coordinator.bootstrap import serve_forever

    serve_forever(data, listen=listen, database=database, policy=policy, verbose=verbose, web=web,
                  health_listen=health_listen)


@main.group(cls=CarelineGroup)
def pki() -> None:
    """The coordinator's CA and TLS server certificate."""


@pki.command("renew")
@data_option
@click.option("--hostname", "hostnames", multiple=True,
              help="Names for the new certificate (default: the current one's).")
@json_option
def pki_renew(data: str | None, hostnames: tuple[str, ...], as_json: bool) -> None:
    """Re-issue the server certificate under the same CA: no agent is re-enrolled.
    A running coordinator uses it once restarted."""
    from careline.coordinator.datadir import DataDir, resolve
    from careline.coordinator.pki import issue_server_certificate

    datadir = DataDir(resolve(data)).require()
    expires = issue_server_certificate(datadir.pki, list(hostnames) or None)
    if as_json:
        from careline.coordinator.render import emit

        emit({"expires": expires.isoformat(), "certificate": str(datadir.pki / "server.pem")}, True)
        return
    click.echo(f"New server certificate {datadir.pki / 'server.pem'}, valid until "
               f"{expires:%Y-%m-%d}; restart `careline serve` to use it.")


@main.command("haproxy-config")
@data_option
@click.option("--listen", default="0.0.0.0:8443", show_default=True,
              help="HOST:PORT HAProxy takes agents and technicians on (public_url's port).")
@click.option("--backend", "backends", multiple=True, required=True,
              help="HOST:PORT of one `careline serve` process (repeatable).")
@click.option("--maxconn", type=int, default=10_000, show_default=True,
              help="Connections HAProxy holds (needs about 2 file descriptors each).")
@click.option("--server-maxconn", type=click.IntRange(min=0), default=0, show_default=True,
              help="Connections one `careline serve` process may hold (its open-files limit "
              "less ~300); more wait in HAProxy's queue. 0: no limit.")
def haproxy_config_command(data: str | None, listen: str, backends: tuple[str, ...],
                           maxconn: int, server_maxconn: int) -> None:
    """Print the HAProxy configuration for several processes on one PostgreSQL database
    (TCP/TLS passthrough, leastconn, TLS health check timed from the heartbeat interval)."""
    from careline.coordinator.datadir import DataDir, resolve
    from careline.coordinator.haproxy import haproxy_config

    datadir = DataDir(resolve(data)).require()
    settings = datadir.settings()
    click.echo(haproxy_config(listen, list(backends), str(datadir.ca_file),
                              heartbeat_interval=settings.heartbeat_interval,
                              admin_idle_timeout=settings.admin_idle_timeout, maxconn=maxconn,
                              server_maxconn=server_maxconn),
               nl=False)


# ============================================================================ customers
@main.group(cls=CarelineGroup)
def customers() -> None:
    """Customers (companies using the vendor's software)."""


@technician_command(customers, "add")
@click.argument("name")
@click.option("--timezone", default="Asia/Ho_Chi_Minh", show_default=True)
def customers_add(client: Any, as_json: bool, name: str, timezone: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("customers.add", name=name, timezone=timezone), as_json)


@technician_command(customers, "list")
def customers_list(client: Any, as_json: bool) -> None:
    from careline.coordinator.render import emit

    emit(client.call("customers.list"), as_json, title="customers")


@main.group(cls=CarelineGroup)
def sites() -> None:
    """A customer's sites (offices, branches) where machines are."""


@technician_command(sites, "add")
@click.option("--customer", required=True)
@click.argument("name")
def sites_add(client: Any, as_json: bool, customer: str, name: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("sites.add", customer=customer, name=name), as_json)


@technician_command(sites, "list")
@click.option("--customer", default=None)
def sites_list(client: Any, as_json: bool, customer: str | None) -> None:
    from careline.coordinator.render import emit

    emit(client.call("sites.list", customer=customer), as_json, title="sites")


# ============================================================================ tokens
@main.group(cls=CarelineGroup)
def tokens() -> None:
    """Enrollment tokens for installing agents at a customer."""


@technician_command(tokens, "create")
@click.option("--customer", required=True, help="Customer id or name.")
@click.option("--uses", default=1, show_default=True, help="How many machines may enroll.")
@click.option("--expires", default="24h", show_default=True, help="Lifetime, e.g. 30m, 24h, 7d.")
@click.option("--contract", type=int, default=None,
              help="Contract the machines join (default: the customer's current one).")
@click.option("--site", default=None, help="The customer's site the machines are at.")
@click.option("--expect-root", envvar="CARELINE_ROOT_PIN", default=None,
              help="The update root hash `careline release keys init` printed: refuse a join "
                   "string that pins another (env CARELINE_ROOT_PIN).")
def tokens_create(client: Any, as_json: bool, customer: str, uses: int, expires: str,
                  contract: int | None, site: str | None, expect_root: str | None) -> None:
    from careline.shared.errors import VerificationError
    from careline.shared.units import parse_duration

    seconds = parse_duration(expires).total_seconds()
    result = client.call("tokens.create", customer=customer, uses=uses, expires_seconds=seconds,
                         contract=contract, site=site)
    if expect_root and (result.get("root_pin") or "") != expect_root.strip().lower():
        raise VerificationError(
            f"the coordinator's join string pins update root {result.get('root_pin')}, not "
            f"{expect_root}: do not hand it out (token {result['token_id']} was created)")
    if not result.get("root_pin"):
        click.echo("warning: no release keys yet, so this join string pins no update root; "
                   "its machines need `careline-agent pin-root` before they accept updates",
                   err=True)
    if as_json:
        from careline.coordinator.render import emit

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
    from careline.coordinator.api.fleet import AGENT_LIST_FIELDS
    from careline.coordinator.render import emit

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
    from careline.coordinator.render import emit

    emit(client.call("agents.show", id=agent), as_json)


HISTORY_FIELDS = ("at", "cpu_percent", "memory_percent", "disk_free_percent", "disk_free", "problems")


@technician_command(agents, "history")
@click.argument("agent")
@click.option("--hours", type=click.IntRange(1, 24 * 31), default=24, show_default=True,
              help="How far back.")
def agents_history(client: Any, as_json: bool, agent: str, hours: int) -> None:
    """The machine's health samples (one every 15 minutes at most), oldest first."""
    from careline.coordinator.render import emit

    result = client.call("agents.health_history", id=agent, hours=hours)
    if as_json:
        emit(result, True)
        return
    rows = [{**s, "problems": ", ".join(f"{x['kind']} {x['subject']}" for x in s["problems"])}
            for s in result["samples"]]
    emit(rows, False, HISTORY_FIELDS, title=f"health of {result['hostname']}")


@technician_command(agents, "revoke")
@click.argument("agent")
def agents_revoke(client: Any, as_json: bool, agent: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("agents.revoke", id=agent), as_json)


@technician_command(agents, "candidates")
@click.option("--customer", default=None, help="Only this customer's machines.")
def agents_candidates(client: Any, as_json: bool, customer: str | None) -> None:
    """Machines that may be reinstalls of an earlier one (same hardware): link with replace."""
    from careline.coordinator.render import emit

    emit(client.call("agents.candidates", customer=customer), as_json,
         ("customer", "old", "old_hostname", "new", "new_hostname", "strength", "matching"),
         title="possible reinstalls")


@technician_command(agents, "replace")
@click.argument("old")
@click.argument("new")
def agents_replace(client: Any, as_json: bool, old: str, new: str) -> None:
    """NEW is a reinstall of OLD: OLD keeps its id, history and seat, and takes NEW's key."""
    from careline.coordinator.render import emit

    emit(client.call("agents.replace", old=old, new=new), as_json)


@technician_command(agents, "distinct")
@click.argument("old")
@click.argument("new")
def agents_distinct(client: Any, as_json: bool, old: str, new: str) -> None:
    """OLD and NEW share hardware but are different PCs (a cloned disk): stop proposing them."""
    from careline.coordinator.render import emit

    emit(client.call("agents.distinct", old=old, new=new), as_json)


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
        from careline.coordinator.render import emit

        emit(result, True)
    else:
        click.echo(f"Technician {name} ({role}) token, shown once:")
        click.echo(f"  {result['token']}")


@technician_command(technicians, "list")
def technicians_list(client: Any, as_json: bool) -> None:
    from careline.coordinator.render import emit

    emit(client.call("technicians.list"), as_json, title="technicians")


@technician_command(technicians, "revoke")
@click.argument("name")
def technicians_revoke(client: Any, as_json: bool, name: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("technicians.revoke", name=name), as_json)

@technician_command(customers, "hours")
@click.argument("customer")
@click.option("--workdays", default=None, help="e.g. mon,tue,wed,thu,fri,sat")
@click.option("--opens", default=None, help="HH:MM local time")
@click.option("--closes", default=None, help="HH:MM local time")
def customers_hours(client: Any, as_json: bool, customer: str, workdays: str | None,
                    opens: str | None, closes: str | None) -> None:
    """Set a customer's business hours (due times count in them)."""
    from careline.coordinator.render import emit

    emit(client.call("customers.hours", customer=customer, workdays=workdays, opens=opens,
                     closes=closes), as_json)


@technician_command(customers, "closed")
@click.argument("customer")
@click.option("--from", "first_day", default=None, help="First closed day, YYYY-MM-DD.")
@click.option("--to", "last_day", default=None, help="Last closed day, YYYY-MM-DD.")
@click.option("--note", default="", help="Why, e.g. Tet.")
def customers_closed(client: Any, as_json: bool, customer: str, first_day: str | None,
                     last_day: str | None, note: str) -> None:
    """Record days the customer is closed (no offline incidents, no due times in them);
    without --from/--to, list their closures."""
    from careline.coordinator.render import emit

    emit(client.call("customers.closed", customer=customer, first_day=first_day,
                     last_day=last_day, note=note), as_json,
         ("id", "first_day", "last_day", "note", "created_by"), title="closures")


# ============================================================================ contracts
@main.group(cls=CarelineGroup)
def contracts() -> None:
    """Contracts: warranty from the signing date, then maintenance packages."""


@technician_command(contracts, "add")
@click.option("--customer", required=True, help="Customer id or name.")
@click.option("--signed", required=True, help="Signing date, YYYY-MM-DD.")
@click.option("--warranty-months", default=12, show_default=True)
@click.option("--machines", type=int, default=None, help="Machines the contract covers.")
def contracts_add(client: Any, as_json: bool, customer: str, signed: str, warranty_months: int,
                  machines: int | None) -> None:
    from careline.coordinator.render import emit

    emit(client.call("contracts.add", customer=customer, signed=signed,
                     warranty_months=warranty_months, machines=machines), as_json)


@technician_command(contracts, "list")
@click.option("--customer", default=None)
def contracts_list(client: Any, as_json: bool, customer: str | None) -> None:
    from careline.coordinator.render import emit

    emit(client.call("contracts.list", customer=customer), as_json, title="contracts")


@technician_command(contracts, "show")
@click.argument("contract", type=int)
def contracts_show(client: Any, as_json: bool, contract: int) -> None:
    from careline.coordinator.render import emit

    emit(client.call("contracts.show", id=contract), as_json)


@main.group(cls=CarelineGroup)
def maintenance() -> None:
    """Maintenance packages bought after the warranty."""


@technician_command(maintenance, "add")
@click.option("--contract", required=True, type=int)
@click.option("--start", required=True, help="First covered day, YYYY-MM-DD.")
@click.option("--end", required=True, help="Last covered day, YYYY-MM-DD.")
@click.option("--tier", required=True, help="A tier of the policy file (basic, standard, premium).")
def maintenance_add(client: Any, as_json: bool, contract: int, start: str, end: str,
                    tier: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("maintenance.add", contract=contract, start=start, end=end, tier=tier),
         as_json)


@technician_command(main, "entitlement")
@click.argument("machine")
@click.option("--at", default=None, help="Date, YYYY-MM-DD (default: today, customer's zone).")
def entitlement(client: Any, as_json: bool, machine: str, at: str | None) -> None:
    """What covers a machine on a date: warranty, maintenance:<tier> or not_covered."""
    from careline.coordinator.render import emit

    emit(client.call("entitlement.show", machine=machine, at=at), as_json)


@main.group(cls=CarelineGroup)
def policy() -> None:
    """Policy overrides: vendor file -> customer -> site -> machine."""


def _policy_target(fn: Any) -> Any:
    fn = click.option("--machine", default=None, help="A machine (id, prefix or hostname).")(fn)
    fn = click.option("--site", default=None, help="A site of --customer (id or name).")(fn)
    return click.option("--customer", default=None, help="Customer id or name.")(fn)


POLICY_COLUMNS = ("key", "value", "source")


@technician_command(policy, "set")
@_policy_target
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
def policy_set(client: Any, as_json: bool, customer: str | None, site: str | None,
               machine: str | None, assignments: tuple[str, ...]) -> None:
    """Override values, e.g. fees.onsite_reinstall_vnd=450000 (admin)."""
    from careline.coordinator.render import emit

    emit(client.call("policy.set", customer=customer, site=site, machine=machine,
                     assignments=list(assignments)), as_json, POLICY_COLUMNS, title="policy")


@technician_command(policy, "unset")
@_policy_target
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
def policy_unset(client: Any, as_json: bool, customer: str | None, site: str | None,
                 machine: str | None, keys: tuple[str, ...]) -> None:
    """Drop overrides: the values fall back to the level above (admin)."""
    from careline.coordinator.render import emit

    emit(client.call("policy.unset", customer=customer, site=site, machine=machine,
                     keys=list(keys)), as_json, POLICY_COLUMNS, title="policy")


@technician_command(policy, "show")
@_policy_target
def policy_show(client: Any, as_json: bool, customer: str | None, site: str | None,
                machine: str | None) -> None:
    """Every value that may vary by customer and where it comes from."""
    from careline.coordinator.render import emit

    emit(client.call("policy.show", customer=customer, site=site, machine=machine), as_json,
         POLICY_COLUMNS, title="policy")


@main.group(cls=CarelineGroup)
def report() -> None:
    """Reports for the vendor's office."""


@technician_command(report, "expiring")
@click.option("--within", default="30d", show_default=True, help="e.g. 7d, 15d, 30d.")
def report_expiring(client: Any, as_json: bool, within: str) -> None:
    """Machines whose coverage ends soon: who to offer a maintenance package to."""
    from careline.coordinator.render import emit
    from careline.shared.units import parse_duration

    days = parse_duration(within).days
    emit(client.call("report.expiring", within_days=days), as_json, title="expiring coverage")


@technician_command(report, "care", timeout=120.0)
@click.option("--customer", required=True, help="Customer id or name.")
@click.option("--month", required=True, help="YYYY-MM, the customer's local calendar month.")
@click.option("--format", "fmt", type=click.Choice(["pdf", "html"]), default="pdf", show_default=True)
@click.option("--lang", type=click.Choice(["vi", "en"]), default="vi", show_default=True)
@click.option("--out", required=True, help="File to write.")
def report_care(client: Any, as_json: bool, customer: str, month: str, fmt: str, lang: str,
                out: str) -> None:
    """The customer's monthly care report: coverage, incidents, updates, visits, renewal."""
    from pathlib import Path

    from careline.coordinator import care_report

    data = client.call("report.care", customer=customer, month=month)
    if fmt == "html":
        Path(out).write_text(care_report.render_html(data, lang), encoding="utf-8")
    else:
        Path(out).write_bytes(care_report.render_pdf(data, lang))
    if as_json:
        from careline.coordinator.render import emit

        emit({"out": out, "format": fmt, "lang": lang, "customer": data["customer"]["name"],
              "month": month, "machines": len(data["machines"]),
              "incidents": len(data["incidents"])}, True)
    else:
        click.echo(f"Wrote {out}")


# ============================================================================ incidents
@main.group(cls=CarelineGroup)
def incidents() -> None:
    """Incidents: opened by agents' reports or by technicians, each with a decision."""


INCIDENT_COLUMNS = ("id", "status", "customer", "hostname", "kind", "category", "severity",
                    "action", "fee_vnd", "due_at", "waiting_on")


@technician_command(incidents, "open")
@click.option("--machine", required=True)
@click.option("--category", required=True,
              type=click.Choice(["virus", "power", "disk", "bug", "regulation", "config", "other"]))
@click.option("--severity", required=True, type=click.Choice(["low", "medium", "high", "critical"]))
@click.option("--note", default="", help="What the customer reported.")
def incidents_open(client: Any, as_json: bool, machine: str, category: str, severity: str,
                   note: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("incidents.open", machine=machine, category=category, severity=severity,
                     note=note), as_json)


@technician_command(incidents, "list")
@click.option("--open", "open_only", is_flag=True, help="Only open incidents.")
@click.option("--customer", default=None)
@click.option("--machine", default=None)
def incidents_list(client: Any, as_json: bool, open_only: bool, customer: str | None,
                   machine: str | None) -> None:
    from careline.coordinator.render import emit

    emit(client.call("incidents.list", open=open_only, customer=customer, machine=machine),
         as_json, INCIDENT_COLUMNS, title="incidents")


@technician_command(incidents, "show")
@click.argument("incident", type=int)
def incidents_show(client: Any, as_json: bool, incident: int) -> None:
    from careline.coordinator.render import emit

    emit(client.call("incidents.show", id=incident), as_json)


@technician_command(incidents, "explain")
@click.argument("incident", type=int)
def incidents_explain(client: Any, as_json: bool, incident: int) -> None:
    """Why the decision is what it is: coverage, the policy rule, the fee, the due time."""
    result = client.call("incidents.explain", id=incident)
    if as_json:
        from careline.coordinator.render import emit

        emit(result, True)
        return
    covered = "covered" if result["covered"] else "not covered"
    click.echo(f"Incident {incident} ({result['category']}, {result['severity']}): "
               f"{result['action']}, {covered}, fee {result['fee_vnd']:,} VND, "
               f"due {result['due_at']}")
    for number, reason in enumerate(result["reasons"], 1):
        click.echo(f"  {number}. {reason}")


@technician_command(incidents, "wait")
@click.argument("incident", type=int)
@click.option("--on", "on", type=click.Choice(["customer", "vendor", "third_party"]),
              default="customer", show_default=True)
@click.option("--note", default="", help="What it waits for.")
def incidents_wait(client: Any, as_json: bool, incident: int, on: str, note: str) -> None:
    """Stop the incident's due-time clock while it waits on someone."""
    from careline.coordinator.render import emit

    emit(client.call("incidents.wait", id=incident, on=on, note=note), as_json)


@technician_command(incidents, "resume")
@click.argument("incident", type=int)
def incidents_resume(client: Any, as_json: bool, incident: int) -> None:
    """Start the clock again; the due time moves out by the business time paused."""
    from careline.coordinator.render import emit

    emit(client.call("incidents.resume", id=incident), as_json)


@technician_command(incidents, "resolve")
@click.argument("incident", type=int)
@click.option("--note", required=True, help="How it was resolved.")
def incidents_resolve(client: Any, as_json: bool, incident: int, note: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("incidents.resolve", id=incident, note=note), as_json)


@technician_command(incidents, "redecide")
@click.argument("incident", type=int)
def incidents_redecide(client: Any, as_json: bool, incident: int) -> None:
    """Decide again with today's facts."""
    from careline.coordinator.render import emit

    emit(client.call("incidents.redecide", id=incident), as_json)


@main.group(cls=CarelineGroup)
def visits() -> None:
    """On-site work orders (reinstalls, technician visits, media by post)."""


@technician_command(visits, "list")
@click.option("--due", type=click.Choice(["today", "all"]), default="all", show_default=True)
@click.option("--completed", is_flag=True, help="Include completed visits.")
@click.option("--customer", default=None, help="Only this customer's (id or name).")
def visits_list(client: Any, as_json: bool, due: str, completed: bool, customer: str | None) -> None:
    from careline.coordinator.render import emit

    emit(client.call("visits.list", due=due, completed=completed, customer=customer), as_json,
         ("id", "status", "customer", "agent_id", "action", "fee_vnd", "due_at", "technician"),
         title="visits")


@technician_command(visits, "assign")
@click.argument("visit", type=int)
@click.option("--technician", required=True)
def visits_assign(client: Any, as_json: bool, visit: int, technician: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("visits.assign", id=visit, technician=technician), as_json)


@technician_command(visits, "complete")
@click.argument("visit", type=int)
@click.option("--note", required=True)
def visits_complete(client: Any, as_json: bool, visit: int, note: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("visits.complete", id=visit, note=note), as_json)


# ============================================================================ live commands
def _waiting(seconds: float, what: str) -> float:
    """Say how long a live command may take (the server's own timeout, which the client
    waits out too), on stderr so --json output stays clean."""
    click.echo(f"waiting up to {seconds:g}s for {what}...", err=True)
    return seconds


@technician_command(agents, "ping")
@click.option("--machine", default=None)
@click.option("--customer", default=None)
@click.option("--all", "all_", is_flag=True, help="Every enrolled machine.")
@click.option("--timeout", default="5s", show_default=True)
def agents_ping(client: Any, as_json: bool, machine: str | None, customer: str | None,
                all_: bool, timeout: str) -> None:
    """Is the machine there? Answers print as they arrive."""
    import json

    from careline.shared.units import parse_duration

    seconds = _waiting(parse_duration(timeout).total_seconds(), "answers")
    answers = []
    for answer in client.stream("agents.ping", machine=machine, customer=customer, all=all_,
                                timeout=seconds, wait=seconds):
        if answer is None:
            continue
        if answer.get("summary"):
            summary = answer
        elif as_json:
            answers.append(answer)
        else:
            rtt = f"{answer['rtt_ms']:.1f} ms" if answer["status"] == "ok" else answer["status"]
            click.echo(f"{answer['machine']:24} {answer['hostname']:20} {rtt}")
    if as_json:
        click.echo(json.dumps(answers, indent=2))
        return
    others = ", ".join(f"{k} {v}" for k, v in summary.items()
                       if k not in ("summary", "machines", "median_rtt_ms"))
    median = summary["median_rtt_ms"]
    click.echo(f"{summary['machines']} machines: {others}"
               + (f"; median {median:.1f} ms" if median is not None else ""))


@technician_command(main, "diagnose")
@click.option("--machine", required=True)
@click.option("--incident", type=int, default=None, help="Attach the bundle to this incident.")
@click.option("--lines", default=200, show_default=True, help="Log lines per log.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the bundle here.")
@click.option("--timeout", default="30s", show_default=True, help="How long the machine may take.")
def diagnose(client: Any, as_json: bool, machine: str, incident: int | None, lines: int,
             out: str | None, timeout: str) -> None:
    """Collect a diagnostics bundle from a machine and store it."""
    import json

    from careline.shared.units import parse_duration

    seconds = _waiting(parse_duration(timeout).total_seconds(), f"{machine} to collect diagnostics")
    result = client.call("agents.diagnose", machine=machine, incident=incident, log_lines=lines,
                         timeout=seconds, wait=seconds)
    if out:
        with open(out, "w") as f:
            json.dump(result["bundle"], f, indent=2)
    if as_json:
        click.echo(json.dumps(result if not out else {k: v for k, v in result.items()
                                                      if k != "bundle"}, indent=2))
        return
    bundle = result["bundle"]
    click.echo(f"Diagnostics {result['id']} from {result['machine']} ({result['rtt_ms']:.0f} ms)")
    click.echo(f"  system:   {bundle['system']['os']}, {bundle['system']['memory_percent']}% memory")
    for disk in bundle["disks"]:
        click.echo(f"  disk:     {disk['mount']} {disk['percent']}% used")
    for name, product in bundle["products"].items():
        state = "running" if product["running"] else "not running"
        click.echo(f"  product:  {name} {product['version'] or '?'} {state}, "
                   f"{len(product['integrity'])} integrity problems")
    if out:
        click.echo(f"  written to {out}")


@main.group(cls=CarelineGroup)
def diagnostics() -> None:
    """Stored diagnostics bundles."""


@technician_command(diagnostics, "list")
@click.option("--machine", required=True)
def diagnostics_list(client: Any, as_json: bool, machine: str) -> None:
    from careline.coordinator.render import emit

    emit(client.call("diagnostics.list", machine=machine), as_json, title="diagnostics")


@technician_command(diagnostics, "show")
@click.argument("diagnostics_id", type=int)
def diagnostics_show(client: Any, as_json: bool, diagnostics_id: int) -> None:
    import json

    click.echo(json.dumps(client.call("diagnostics.show", id=diagnostics_id), indent=2))


@technician_command(main, "restart-product")
@click.option("--machine", required=True)
@click.option("--product", required=True)
@click.option("--timeout", default="60s", show_default=True, help="How long the restart may take.")
def restart_product(client: Any, as_json: bool, machine: str, product: str, timeout: str) -> None:
    """Stop and start a product's process; says whether it came back up."""
    from careline.coordinator.render import emit
    from careline.shared.units import parse_duration

    seconds = _waiting(parse_duration(timeout).total_seconds(), f"{machine} to restart {product}")
    result = client.call("agents.restart_product", machine=machine, product=product,
                         timeout=seconds, wait=seconds)
    if as_json:
        emit(result, True)
    else:
        state = "running again" if result["running"] else "NOT running"
        click.echo(f"{product} on {result['machine']}: {state} "
                   f"(pids {result['pids_before']} -> {result['pids_after']})")


# ============================================================================ rollouts
@main.group(cls=CarelineGroup)
def rollouts() -> None:
    """Staged rollouts of a release to every machine that needs it."""


@technician_command(rollouts, "start")
@click.option("--release", required=True, help="Release id, or 'PRODUCT VERSION'.")
@click.option("--customer", default=None, help="Only this customer's machines.")
@click.option("--waves", default=None, help="Cumulative percents, e.g. 5,25,100.")
def rollouts_start(client: Any, as_json: bool, release: str, customer: str | None,
                   waves: str | None) -> None:
    _show_rollout(client.call("rollouts.start", release=release, customer=customer,
                              waves=waves), as_json, not_covered=False)


@technician_command(rollouts, "list")
@click.option("--open", "open_only", is_flag=True)
def rollouts_list(client: Any, as_json: bool, open_only: bool) -> None:
    from careline.coordinator.render import emit

    emit(client.call("rollouts.list", open=open_only), as_json,
         ("id", "product", "version", "kind", "status", "sent_waves", "in_scope", "targeted",
          "succeeded", "failed", "not_covered", "overdue", "reason"), title="rollouts")


def _show_rollout(rollout: dict[str, Any], as_json: bool, not_covered: bool) -> None:
    from careline.coordinator.render import emit

    if not_covered:
        emit(rollout["not_covered"], as_json, ("machine", "hostname", "customer", "detail"),
             title=f"rollout {rollout['id']}: machines not covered")
        return
    if as_json:
        emit(rollout, True)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console()
    console.print(f"[bold]Rollout {rollout['id']}[/]: {rollout['product']} {rollout['version']}"
                  f" ({rollout['kind']}) — {rollout['status']}: {rollout['reason']}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[counts]}"), console=console, auto_refresh=False)
    for wave in rollout["waves"]:
        counts = (f"{wave['succeeded']}/{wave['targeted']} ok, {wave['failed']} failed, "
                  f"{wave['pending']} pending, {wave['offline']} offline — {wave['verdict']}")
        progress.add_task(f"wave {wave['wave']}{'' if wave['sent'] else ' (not sent)'}",
                          total=max(wave["targeted"], 1), completed=wave["succeeded"],
                          counts=counts)
    progress.refresh()
    counts = ", ".join(f"{n} {state.replace('_', ' ')}"
                       for state, n in rollout["counts"].items() if n)
    console.print(f"{rollout['in_scope']} machines in scope: {counts or 'none yet'}")
    if rollout["machines"]:
        emit(rollout["machines"], False, ("machine", "hostname", "customer", "wave", "state",
                                          "version", "job", "detail"),
             title=f"rollout {rollout['id']}: machines in scope")


@technician_command(rollouts, "show")
@click.argument("rollout", type=int)
@click.option("--not-covered", is_flag=True, help="The machines left out for lack of coverage.")
def rollouts_show(client: Any, as_json: bool, rollout: int, not_covered: bool) -> None:
    """A rollout's waves and where every machine in its scope stands: pending, unknown
    version, waiting for window, offline, sent, installed, failed, not covered, retired,
    overdue (covered and still without it on or after the effective date)."""
    _show_rollout(client.call("rollouts.show", id=rollout), as_json, not_covered)


def _rollout_action(name: str, method: str, doc: str) -> None:
    @technician_command(rollouts, name, help=doc)
    @click.argument("rollout", type=int)
    def command(client: Any, as_json: bool, rollout: int) -> None:
        from careline.coordinator.render import emit

        emit(client.call(method, id=rollout), as_json)


_rollout_action("pause", "rollouts.pause", "Stop sending the next machines.")
_rollout_action("resume", "rollouts.resume", "Carry on after a pause.")
_rollout_action("cancel", "rollouts.cancel", "End the rollout; nothing more is sent.")
_rollout_action("retry-failed", "rollouts.retry_failed",
                "Send again to failed and timed-out machines (resumes a paused rollout).")


@technician_command(customers, "install-window")
@click.argument("customer")
@click.option("--window", default=None, help="Local hours, e.g. 18:00-07:00; omit to clear.")
def customers_install_window(client: Any, as_json: bool, customer: str,
                             window: str | None) -> None:
    """When updates may install at a customer (default: whenever the product is closed).

    Sets the customer level of the policy value rollouts.install_window; sites and machines
    may have their own (careline policy set --site/--machine)."""
    from careline.coordinator.render import emit

    emit(client.call("customers.install_window", customer=customer, window=window), as_json)


# ============================================================================ audit
@technician_command(main, "audit")
@click.option("--limit", default=50, show_default=True)
def audit(client: Any, as_json: bool, limit: int) -> None:
    """Every recorded action, newest first, with who did it."""
    from careline.coordinator.render import emit

    emit(client.call("audit.list", limit=limit), as_json,
         ["at", "actor", "action", "target", "detail"], title="audit")


# ============================================================================ releases & jobs
from careline.coordinator.cli_release import jobs, push, release, releases  # noqa: E402

for _group in (release, releases, push, jobs):
    main.add_command(_group)

from careline.coordinator.cli_notify import notify  # noqa: E402

main.add_command(notify)


if __name__ == "__main__":
    sys.exit(main())
