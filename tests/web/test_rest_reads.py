"""Which technician methods the REST API answers on GET: only those that change nothing."""

from __future__ import annotations

from careline.coordinator import api
from careline.coordinator.web.app import api_router


def test_get_is_offered_for_reads_only() -> None:
    api.load_all()
    gets = {r.path.removeprefix("/api/v1/") for r in api_router(None).routes  # type: ignore[arg-type]
            if "GET" in r.methods}
    readers = {m.name.replace(".", "/") for m in api.METHODS.values() if m.reads_only}
    assert gets == readers
    assert {"customers/list", "incidents/page", "agents/health_history", "report/care"} <= gets
    # A viewer's own setting, a ping (it talks to machines, streaming) and every technician
    # or admin method stay POST only.
    assert not {"profile/language", "agents/ping", "customers/add", "push/update"} & gets
