"""Output for the technician CLI: JSON for scripts, a readable table for people."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
        try:  # ISO timestamps: drop sub-seconds, keep it UTC and say so
            return dt.datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%SZ")
        except ValueError:
            return value
    return str(value)


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None, title: str = "") -> None:
    """Print `data` (a dict or a list of dicts) as JSON or as a table/record."""
    if as_json:
        json.dump(data, sys.stdout, indent=2, default=str, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if isinstance(data, dict):
        table = Table(show_header=False, box=None, title=title or None)
        for key, value in data.items():
            table.add_row(f"[bold]{key}[/]", _cell(value))
        console.print(table)
        return
    rows = list(data)
    if not rows:
        console.print(f"(no {title or 'rows'})")
        return
    columns = list(columns or rows[0].keys())
    table = Table(*columns, title=title or None)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)
