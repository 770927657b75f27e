"""Log lines no peer can forge.

Hostnames, product names, method names and exception messages can come from a hostile
agent or client. A newline in one of them must not start what looks like a log record of
its own, and terminal escapes must not reach an operator's screen. `SafeFormatter` escapes
every record's message and prefixes each further line (tracebacks) with "| ", so the only
lines that start like records are records.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _escape(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def safe_text(value: object, limit: int = 200) -> str:
    """A peer-chosen string for a log line or close reason: unprintables escaped, cut to
    `limit` characters."""
    text = str(value)
    cut = len(text) > limit
    return _escape(text[:limit]) + ("…" if cut else "")


class SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        record.msg, record.args = _escape(record.getMessage()), None
        try:
            text = super().format(record)
        finally:
            record.msg, record.args = saved
        head, *rest = text.split("\n")
        return "\n".join([head, *("| " + _escape(line) for line in rest)])


def use_safe_formatter(fmt: str = LOG_FORMAT) -> None:
    """Give every handler of the root logger a SafeFormatter (after basicConfig)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(SafeFormatter(fmt))
