"""Languages, money and local times for everything people read: notifications, web pages, reports.

Careline's texts are written in English in the source (the gettext message ids) and translated to
Vietnamese in ``coordinator/locale/vi/LC_MESSAGES/<domain>.po``. The ``.po`` files are the only
source: they are compiled in memory on first use, so there is no build step and no binary
catalog in the repository. Each reader of texts has its own domain (``notify``, ``web``,
``report``) so their catalogs can be edited apart.

Money is always shown with Vietnamese grouping (``500.000 ₫``), whatever the reader's language:
it is the currency's own convention and what appears on the vendor's invoices. Times are stored
in UTC and shown in the reader's time zone.
"""

from __future__ import annotations

import functools
import io
from datetime import datetime
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency
from babel.support import NullTranslations, Translations

LANGUAGES = ("vi", "en")
DEFAULT_LANGUAGE = "vi"


def negotiate(accept_language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The supported language a browser's Accept-Language header prefers most (else `default`)."""
    if not accept_language:
        return default
    ranked: list[tuple[float, str]] = []
    for part in accept_language.split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag:
            ranked.append((quality, tag.strip()))
    preferred = [tag for _, tag in sorted(ranked, key=lambda item: -item[0])]
    for tag in preferred:
        lang = tag.split("-")[0].lower()
        if lang in LANGUAGES:
            return lang
    return default


def language(value: str | None) -> str:
    """A supported language for a stored preference; unknown or empty values mean the default."""
    if value:
        try:
            parsed = Locale.parse(value.replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            return DEFAULT_LANGUAGE
        if parsed.language in LANGUAGES:
            return parsed.language
    return DEFAULT_LANGUAGE


def format_vnd(amount: int) -> str:
    """An integer amount of đồng as Vietnamese write it: ``500.000 ₫``."""
    return str(format_currency(amount, "VND", locale="vi_VN"))


def format_time(moment: datetime, timezone: str, lang: str) -> str:
    """A UTC instant as a date and time in `timezone`, in the reader's language."""
    local = moment.astimezone(ZoneInfo(timezone))
    return str(format_datetime(local, "short", tzinfo=ZoneInfo(timezone), locale=lang))


def format_day(moment: datetime, timezone: str, lang: str) -> str:
    """The calendar date of a UTC instant in `timezone`."""
    return str(format_date(moment.astimezone(ZoneInfo(timezone)).date(), "medium", locale=lang))


@functools.cache
def translations(lang: str, domain: str) -> NullTranslations:
    """The compiled catalog of `domain` for `lang` (English is the source: no catalog)."""
    if lang == "en":
        return NullTranslations()
    source = resources.files("careline.coordinator").joinpath("locale", lang, "LC_MESSAGES", f"{domain}.po")
    if not source.is_file():
        return NullTranslations()
    with source.open("rb") as po:
        catalog = read_po(po, locale=lang, domain=domain)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=domain)


def template_environment(package: str, overrides: Path | None = None) -> jinja2.Environment:
    """A Jinja2 environment for the templates of `package` (e.g. ``careline.coordinator.notify``).

    A vendor edits texts by copying a template into `overrides` (the data dir's ``templates``
    folder): files there win over the shipped ones. HTML is auto-escaped, so a hostname an agent
    chose is text, never markup.
    """
    loaders: list[jinja2.BaseLoader] = []
    if overrides is not None:
        loaders.append(jinja2.FileSystemLoader(str(overrides)))
    loaders.append(jinja2.PackageLoader(package, "templates"))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(["html", "htm", "xml"]),
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["vnd"] = format_vnd
    env.filters["localtime"] = format_time
    env.filters["localday"] = format_day
    return env


def render(env: jinja2.Environment, template: str, lang: str, domain: str, **context: object) -> str:
    """Render `template` in `lang`, its texts taken from the `domain` catalog."""
    env.install_gettext_translations(translations(lang, domain), newstyle=True)  # type: ignore[attr-defined]
    return env.get_template(template).render(lang=lang, **context)
