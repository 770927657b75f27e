"""Messages in the recipient's language and time zone, from templates a vendor can edit.

Templates live in coordinator/notify/templates (a vendor overrides one by copying it into
DATA/templates/notify/); their texts are gettext messages of the ``notify`` domain, translated
in coordinator/locale/vi/LC_MESSAGES/notify.po. The first line rendered is the subject.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from careline.coordinator import i18n

DOMAIN = "notify"
TEMPLATES = {
    "incident.opened": "incident.txt", "incident.escalated": "incident.txt",
    "incident.updated": "incident.txt", "incident.overdue": "incident.txt",
    "visit.created": "visit.created.txt", "visit.overdue": "visit.created.txt",
    "job.failed": "job.txt", "update.installed": "job.txt",
    "rollout.paused": "rollout.txt", "rollout.deadline_at_risk": "rollout.txt",
    "digest.daily": "digest.daily.txt", "report.care_monthly": "report.care_monthly.txt",
    "coverage.expiring": "coverage.txt", "coverage.ending": "coverage.txt",
}


def N_(text: str) -> str:
    """Marks a label for the catalog; translated when rendered."""
    return text


# Names of codes (incident kinds, actions, severities, outcomes, events) people read.
LABELS: Mapping[str, str] = {
    "disk_full": N_("disk nearly full"), "disk_failing": N_("failing disk"),
    "product_not_running": N_("product not running"),
    "product_crash_loop": N_("product keeps crashing"),
    "integrity_mismatch": N_("product files changed (virus suspected)"),
    "agent_offline": N_("machine offline"), "update_failed": N_("update failed"),
    "unclean_shutdown": N_("power loss"), "regulation_deadline": N_("regulation update missing"),
    "reported": N_("reported by the customer"),
    "remote_update": N_("remote update"), "remote_reinstall": N_("remote reinstall"),
    "remote_guidance": N_("remote guidance"), "physical_media": N_("update sent by post"),
    "technician_visit": N_("technician visit"), "onsite_reinstall": N_("on-site reinstall"),
    "low": N_("low"), "medium": N_("medium"), "high": N_("high"), "critical": N_("critical"),
    "installed": N_("installed"), "rolled_back": N_("rolled back"), "failed": N_("failed"),
    "refused": N_("refused"),
    "incident.opened": N_("incident opened"), "incident.escalated": N_("incident escalated"),
    "incident.updated": N_("incident updated"), "incident.overdue": N_("incident overdue"),
    "visit.created": N_("visit scheduled"), "visit.overdue": N_("visit overdue"),
    "job.failed": N_("update failed"), "update.installed": N_("update installed"),
    "rollout.paused": N_("rollout paused"),
    "rollout.deadline_at_risk": N_("regulation deadline at risk"),
    "coverage.expiring": N_("coverage ending"), "coverage.ending": N_("coverage ending"),
    "digest.daily": N_("daily digest"), "report.care_monthly": N_("monthly care report"),
}


@functools.cache
def environment(overrides: Path | None) -> jinja2.Environment:
    env = i18n.template_environment("careline.coordinator.notify", overrides)
    env.filters["at"] = _at
    env.autoescape = False  # plain-text messages; the webhook's JSON is encoded, not templated
    return env


def _at(value: str | dt.datetime | None, timezone: str, lang: str) -> str:
    if not value:
        return "-"
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return i18n.format_time(moment, timezone, lang)


def render(event: str, items: Sequence[Mapping[str, Any]], *, lang: str, timezone: str,
           recipient: str, overrides: Path | None = None, attached: bool = False) -> tuple[str, str]:
    """(subject, text) of one message about `items` (several: a folded mass event);
    `attached`: the message carries a file (the care report's PDF) the text may mention."""
    lang = i18n.language(lang)
    gettext = i18n.translations(lang, DOMAIN).gettext
    template = "mass.txt" if len(items) > 1 else TEMPLATES.get(event, "generic.txt")
    text = i18n.render(
        environment(overrides), template, lang, DOMAIN, event=event, items=list(items),
        first=items[0], count=len(items), tz=timezone, recipient=recipient, attached=attached,
        label=lambda code: gettext(LABELS[code]) if code in LABELS else str(code),
    )
    subject, _, body = text.strip().partition("\n")
    return subject.strip()[:200], body.strip() + "\n"
