"""The web package's Jinja2 environment, shared by the console's pages and the care report
(which the CLI renders without loading the web framework)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jinja2

from careline.coordinator import i18n


def environment(domain: str, overrides: Path | None) -> jinja2.Environment:
    """The web package's templates, with two filters: `tr`, a stored value (a status, a
    category) in the reader's language as plain text, escaped like any other value (unlike
    `_()`, whose result is trusted markup: never give it a value from the database); and
    `utc`, a timestamp in seconds as a UTC instant."""

    @jinja2.pass_context
    def tr(context: Any, value: Any) -> str:
        return str(i18n.translations(context["lang"], domain).gettext(str(value)))

    env = i18n.template_environment("careline.coordinator.web", overrides)
    env.filters["tr"] = tr
    env.filters["utc"] = lambda seconds: dt.datetime.fromtimestamp(seconds, dt.UTC)
    return env
