"""The web package's Jinja2 environment, shared by the console's pages and the care report
(which the CLI renders without loading the web framework)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from careline.coordinator import i18n
from careline.coordinator.policy import reasons


def sparkline(percents: Sequence[float | None], width: int = 240, height: int = 40) -> str:
    """An SVG polyline's points for these percentages, oldest left, 0-100 bottom to top
    (drawn on the server: no script library). Missing values are skipped; one value is a
    flat line."""
    n = len(percents)
    points = []
    for i, value in enumerate(percents):
        if value is None:
            continue
        y = round(height - max(0.0, min(100.0, float(value))) * height / 100, 1)
        if n == 1:
            points += [f"0,{y}", f"{width},{y}"]
        else:
            points.append(f"{round(i * width / (n - 1), 1)},{y}")
    return " ".join(points)


def environment(domain: str, overrides: Path | None) -> jinja2.Environment:
    """The web package's templates, with these filters: `tr`, a stored value (a status, a
    category) in the reader's language as plain text, escaped like any other value (unlike
    `_()`, whose result is trusted markup: never give it a value from the database); and
    `utc`, a timestamp in seconds as a UTC instant; `reason`, one of a decision's reasons
    worded for the reader; and `sparkline` (above)."""

    @jinja2.pass_context
    def tr(context: Any, value: Any) -> str:
        return str(i18n.translations(context["lang"], domain).gettext(str(value)))

    @jinja2.pass_context
    def reason(context: Any, value: Any) -> str:
        """A decision's reason in the reader's language, money and zone (pages pass `tz`).
        Decisions stored before reasons were data have only the English text: shown as is."""
        if isinstance(value, str):
            return value
        lang, tz = context["lang"], context["tz"]
        return reasons.render(reasons.Reason.from_dict(value),
                              i18n.translations(lang, domain).gettext, money=i18n.format_vnd,
                              zone=tz, moment=lambda moment: i18n.format_time(moment, tz, lang))

    env = i18n.template_environment("careline.coordinator.web", overrides)
    env.filters["tr"] = tr
    env.filters["reason"] = reason
    env.filters["utc"] = lambda seconds: dt.datetime.fromtimestamp(seconds, dt.UTC)
    env.filters["sparkline"] = sparkline
    return env
