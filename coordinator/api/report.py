"""The monthly care report's data, for the CLI, the web console and the REST API alike."""

from __future__ import annotations

from typing import Any

import msgspec

from careline.coordinator.api import Context, method
from careline.coordinator.care_report import gather


class CareReport(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    month: str  # YYYY-MM, the customer's local calendar month


@method("report.care", "viewer", CareReport)
async def care_report(ctx: Context, p: CareReport) -> dict[str, Any]:
    services = ctx.services
    return await gather(services.db, services.desk, services.settings, p.customer, p.month, ctx.now)
