"""The monthly care report: what a customer's warranty or maintenance bought them that month.

`gather` reads it from storage as plain data (the `report.care` method returns it, so the CLI,
the web console and the REST API share one source); `render_html` and `render_pdf` turn that
data into one document from one template, in Vietnamese unless English is asked for.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from careline.coordinator.policy.entitlement import expiring
from careline.shared.errors import ConfigError

if TYPE_CHECKING:
    from careline.coordinator.datadir import Settings
    from careline.coordinator.incidents import IncidentDesk
    from careline.coordinator.storage.db import Database
    from careline.coordinator.storage.views import IncidentLine

ON_SITE = frozenset({"technician_visit", "onsite_reinstall"})
RENEWAL_WITHIN_DAYS = 60


def month_bounds(month: str, timezone: str) -> tuple[dt.datetime, dt.datetime]:
    """The UTC instants where the local calendar month `YYYY-MM` begins and ends."""
    try:
        first = dt.date.fromisoformat(f"{month}-01")
    except ValueError:
        raise ConfigError(f"--month must be YYYY-MM, got {month!r}") from None
    after = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
    zone = ZoneInfo(timezone)

    def instant(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)

    return instant(first), instant(after)


def handled(action: str | None) -> str | None:
    """How an incident was handled, for the customer: on site or remotely."""
    if action is None:
        return None
    return "on_site" if action in ON_SITE else "remote"


def incident_line(row: IncidentLine) -> dict[str, Any]:
    """One incident as the report shows it: handling, time to resolution against the due time."""
    resolved, due = row.resolved_at, row.due_at
    hours = None if resolved is None else round((resolved - row.opened_at).total_seconds() / 3600, 1)
    on_time = None if resolved is None or due is None else resolved <= due
    return {
        "id": row.id, "hostname": row.hostname, "category": row.category,
        "severity": row.severity, "status": row.status, "opened_at": row.opened_at,
        "resolved_at": resolved, "due_at": due, "action": row.action,
        "handled": handled(row.action), "covered": row.covered,
        "fee_vnd": int(row.fee_vnd or 0), "hours_to_resolve": hours, "on_time": on_time,
    }


def attention_reasons(status: str, coverage: str, open_incidents: int) -> list[str]:
    """Why a machine needs attention (reason codes the template translates); empty: it is fine."""
    reasons = []
    if open_incidents:
        reasons.append("open_incidents")
    if status == "offline":  # "off" (shut down cleanly, e.g. for the night) is no concern
        reasons.append("offline")
    if coverage == "not_covered":
        reasons.append("not_covered")
    return reasons


def logo_data_uri(path: str) -> str | None:
    """The vendor's logo inlined, so the report needs nothing beside itself."""
    if not path:
        return None
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"vendor_logo {path}: {exc.strerror}") from None
    kind = mimetypes.guess_type(file.name)[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


async def gather(db: Database, desk: IncidentDesk, settings: Settings, customer_ref: str,
                 month: str, now: dt.datetime) -> dict[str, Any]:
    """`settings`: the coordinator's, for the vendor's name and logo."""
    from careline.coordinator.storage import fleet as store
    from careline.coordinator.storage import views

    async with db.connect() as conn:
        customer = await store.get_customer(conn, customer_ref)
        start, end = month_bounds(month, customer.timezone)
        last_day = (end - dt.timedelta(seconds=1)).astimezone(ZoneInfo(customer.timezone)).date()
        today = now.astimezone(ZoneInfo(customer.timezone)).date()
        agents = [a for a in await store.list_agents(conn, customer.id) if a.revoked_at is None]
        open_by_agent: dict[str, int] = {}
        _, open_rows = await views.incidents_page(conn, open_only=True, customer_id=customer.id,
                                                  agent_id=None, limit=10_000, offset=0)
        for row in open_rows:
            open_by_agent[row.agent_id] = open_by_agent.get(row.agent_id, 0) + 1
        machines, attention, renewal = [], [], []
        for agent in agents:
            at_end = await desk.entitlement(conn, agent, min(last_day, today), now)
            current = await desk.entitlement(conn, agent, today, now)
            status = agent.presence.status(now, desk.offline_after)
            products = {p["name"]: p["version"] for p in agent.products}
            machines.append({"id": agent.id, "hostname": agent.hostname, "status": status,
                             "coverage": at_end.kind, "tier": at_end.tier,
                             "until": at_end.ends_on, "products": products})
            reasons = attention_reasons(status, current.kind, open_by_agent.get(agent.id, 0))
            if reasons:
                attention.append({"hostname": agent.hostname, "reasons": reasons})
            if expiring(current, RENEWAL_WITHIN_DAYS):
                renewal.append({"hostname": agent.hostname, "coverage": current.kind,
                                "tier": current.tier, "ends_on": current.ends_on,
                                "days_left": current.days_left})
        incidents = [incident_line(r) for r in
                     await views.incidents_between(conn, customer.id, start, end)]
        updates = [dataclasses.asdict(u)
                   for u in await views.installed_updates(conn, customer.id, start, end)]
        visits = [{**dataclasses.asdict(v), "charged": v.fee_vnd > 0}
                  for v in await views.visits_between(conn, customer.id, start, end)]
    resolved = [i for i in incidents if i["on_time"] is not None]
    return {
        "customer": {"id": customer.id, "name": customer.name, "timezone": customer.timezone},
        "month": month, "first_day": start.astimezone(ZoneInfo(customer.timezone)).date(),
        "last_day": last_day, "generated_at": now,
        "vendor": {"name": settings.vendor_name, "logo": logo_data_uri(settings.vendor_logo)},
        "machines": machines, "incidents": incidents, "updates": updates, "visits": visits,
        "attention": attention, "renewal": renewal,
        "totals": {
            "incidents": len(incidents), "resolved": len(resolved),
            "on_time": sum(1 for i in resolved if i["on_time"]),
            "on_site": sum(1 for i in incidents if i["handled"] == "on_site"),
            "remote": sum(1 for i in incidents if i["handled"] == "remote"),
            "fees_vnd": sum(int(v["fee_vnd"]) for v in visits if v["status"] == "completed"),
            "visits_waived": sum(1 for v in visits if not v["charged"]),
            "updates_installed": sum(int(u["machines"]) for u in updates),
        },
    }


def render_html(data: dict[str, Any], lang: str, overrides: Path | None = None) -> str:
    """The report as one self-contained HTML page (what the PDF is printed from)."""
    from babel.dates import format_date

    from careline.coordinator import i18n
    from careline.coordinator.web.jinja import environment

    env = environment("report", overrides)
    report = _as_values(data)
    zone = report["customer"]["timezone"]

    def day(value: dt.date | dt.datetime | None) -> str:
        if value is None:
            return ""
        if isinstance(value, dt.datetime):
            return i18n.format_day(value, zone, lang)
        return str(format_date(value, "medium", locale=lang))

    def when(value: dt.datetime | None) -> str:
        return "" if value is None else i18n.format_time(value, zone, lang)

    return i18n.render(env, "care_report.html", lang, "report", r=report, day=day, when=when)


def render_pdf(data: dict[str, Any], lang: str, overrides: Path | None = None) -> bytes:
    """The same page as a PDF, with its fonts (DejaVu: full Vietnamese diacritics) embedded."""
    import logging

    from weasyprint import HTML

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return bytes(HTML(string=render_html(data, lang, overrides)).write_pdf())


def _as_values(data: Any) -> Any:
    """Data that crossed the wire (ISO strings) back to dates and times for the template."""
    if isinstance(data, dict):
        return {k: _as_values(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_as_values(v) for v in data]
    if isinstance(data, str) and len(data) >= 10 and data[4:5] == "-" and data[7:8] == "-":
        try:
            if len(data) == 10:
                return dt.date.fromisoformat(data)
            if data[10:11] == "T":
                return dt.datetime.fromisoformat(data)
        except ValueError:
            return data
    return data
