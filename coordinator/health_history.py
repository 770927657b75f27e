"""Machine health history (issue 15): which heartbeats become samples, and what one keeps.

Pure: the coordinator's 1 s heartbeat flush asks `Sampler.due` which agents to sample
(decided in memory, so the hot path adds one executemany at most every few minutes per
agent) and tells `Sampler.taken` once the samples are stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

SAMPLE_EVERY = dt.timedelta(minutes=15)
RETENTION = dt.timedelta(days=30)


def sample_of(health: Mapping[str, Any]) -> dict[str, Any]:
    """The figures a history keeps of one health report: CPU and memory use, the fullest
    disk's free space (NULL when no disk was reported) and the problems by kind and subject."""
    disks = [d for d in health.get("disks", []) if d.get("total")]
    fullest = max(disks, key=lambda d: d["used"] / d["total"], default=None)
    free = percent = None
    if fullest is not None:
        free = max(0, int(fullest["total"]) - int(fullest["used"]))
        percent = round(100.0 * free / fullest["total"], 1)
    return {
        "cpu_percent": float(health.get("cpu_percent", 0.0)),
        "memory_percent": float(health.get("memory_percent", 0.0)),
        "disk_free_percent": percent,
        "disk_free": free,
        "problems": [{"kind": x["kind"], "subject": x["subject"]} for x in health.get("problems", [])],
    }


class Sampler:
    """When each agent was last sampled (by this process): an agent is due when it never
    was, `every` has passed since, or the clock went back before its last sample."""

    def __init__(self, every: dt.timedelta = SAMPLE_EVERY) -> None:
        self.every = every
        self.last: dict[str, dt.datetime] = {}

    def due(self, beats: Mapping[str, dt.datetime]) -> list[str]:
        """The agents among these (agent, heartbeat time) whose report becomes a sample."""
        due = []
        for agent_id, seen in beats.items():
            last = self.last.get(agent_id)
            if last is None or seen >= last + self.every or seen < last:
                due.append(agent_id)
        return sorted(due)

    def taken(self, samples: Iterable[tuple[str, dt.datetime]]) -> None:
        """Stored: the next sample of each is `every` later."""
        self.last.update(samples)
