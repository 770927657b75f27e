"""Rollouts: one release pushed to every machine that needs it, in staged waves.

The I/O shell around coordinator.policy.waves. Every step is stored in the same
transaction as the job it creates, so a coordinator killed at any instant resumes where it
stood: a machine is sent its job exactly once, and every count is derived from rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.policy import waves
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import rollouts as rstore
from careline.coordinator.storage import updates as ustore
from careline.coordinator.updates import create_job
from careline.shared.errors import ConfigError, Conflict
from careline.shared.package import parse_version
from careline.shared.protocol import AGENT_PRODUCT

if TYPE_CHECKING:
    from careline.coordinator.server import Coordinator

log = logging.getLogger("careline.coordinator")

TICK_SECONDS = 2.0
RETARGET_SECONDS = 30.0
# Job-part statuses of the agent's install, as rollout machine states.
_SUCCEEDED = frozenset({"installed"})
_FAILED = frozenset({"rolled_back", "refused", "failed", "cancelled"})
OPEN_STATUSES = ("running", "paused")


def needs_update(health: dict[str, Any] | None, product: str, version: str) -> bool:
    """The machine runs `product` at a version below `version` (by its last report)."""
    for reported in (health or {}).get("products", []):
        if reported["name"] == product and reported.get("version"):
            try:
                return parse_version(reported["version"]) < parse_version(version)
            except ConfigError:
                return False
    return False


def covers(includes: dict[str, Any], kind: str) -> bool:
    """Whether coverage includes a release of this kind free of charge."""
    if kind == "regulation":
        return bool(includes["regulation_updates"])
    if kind == "bugfix":
        return bool(includes["bug_fixes"])
    return True  # a feature rollout is a technician's explicit choice (an upgrade sold)


class Rollouts:
    def __init__(self, coordinator: Coordinator, rules: waves.WaveRules | None = None) -> None:
        self.coordinator = coordinator
        self.db = coordinator.db
        self.rules = rules or waves.WaveRules()

    # ------------------------------------------------------------------ start
    async def start(
        self, conn: AsyncConnection, release: dict[str, Any], *, actor: str,
        customer_id: int | None = None, percents: tuple[int, ...] | None = None,
        now: dt.datetime,
    ) -> int:
        percents = percents or self.rules.percents
        waves.WaveRules(percents=percents)  # validate before anything is stored
        for open_rollout in await rstore.list_rollouts(conn, OPEN_STATUSES):
            if open_rollout["release_id"] == release["id"] and (
                open_rollout["customer_id"] in (None, customer_id)
            ):
                raise Conflict(f"rollout {open_rollout['id']} of this release is still open")
        rollout_id = await rstore.add_rollout(conn, {
            "release_id": release["id"], "product": release["product"],
            "version": release["version"], "kind": release["kind"],
            "effective": release["effective"], "customer_id": customer_id,
            "percents": ",".join(map(str, percents)), "status": "running", "started_by": actor,
            "started_at": now, "updated_at": now, "last_targeting_at": now,
        })
        rollout = await rstore.get_rollout(conn, rollout_id)
        covered, not_covered = await self._targets(conn, rollout, set(), now)
        plan = waves.plan_waves(
            [waves.Target(a["id"], a["customer_id"]) for a in covered], percents,
            seed=f"release-{release['id']}",
        )
        by_id = {a["id"]: a for a in covered}
        rows = [
            {"rollout_id": rollout_id, "agent_id": agent_id,
             "customer_id": by_id[agent_id]["customer_id"], "wave": index, "state": "pending",
             "detail": ""}
            for index, wave in enumerate(plan) for agent_id in wave
        ]
        rows += [self._not_covered_row(rollout_id, a, reason) for a, reason in not_covered]
        await rstore.add_machines(conn, rows)
        await store.record_audit(conn, actor=actor, action="rollout.start",
                                 target=f"rollout:{rollout_id}",
                                 detail={"release": release["id"], "waves": [len(w) for w in plan],
                                         "not_covered": len(not_covered)}, now=now)
        return rollout_id

    def _not_covered_row(self, rollout_id: int, agent: dict[str, Any], reason: str) -> dict[str, Any]:
        return {"rollout_id": rollout_id, "agent_id": agent["id"],
                "customer_id": agent["customer_id"], "wave": None, "state": "not_covered",
                "detail": reason}

    def _suggestion(self, kind: str) -> str:
        """The tier to offer: the one with the fewest inclusions that covers this kind."""
        fitting = [t for t in self.coordinator.policy.tiers.values()
                   if covers({"regulation_updates": t.regulation_updates,
                              "bug_fixes": t.bug_fixes}, kind)]
        if not fitting:
            return "no maintenance tier includes it"
        return f"offer maintenance:{min(fitting, key=lambda t: t.rank).name}"

    async def _targets(
        self, conn: AsyncConnection, rollout: dict[str, Any], known: set[str], now: dt.datetime,
    ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
        """Machines needing the release and not yet in the rollout, split by coverage."""
        covered, not_covered = [], []
        for agent in await store.list_agents(conn, rollout["customer_id"]):
            if agent["id"] in known or agent["revoked_at"] is not None:
                continue
            if not needs_update(agent["health"], rollout["product"], rollout["version"]):
                continue
            entitlement = await self.coordinator.desk.entitlement(
                conn, agent, rollout["effective"], now)
            if covers(entitlement.to_dict()["includes"], rollout["kind"]) and entitlement.covered:
                covered.append(agent)
            else:
                not_covered.append(
                    (agent, f"{entitlement.label} on {entitlement.at}; "
                            f"{self._suggestion(rollout['kind'])}"))
        return covered, not_covered

    # ------------------------------------------------------------------ the loop
    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await self.tick(dt.datetime.now(dt.UTC))
            except Exception:
                log.exception("rollout tick failed; will retry")

    async def tick(self, now: dt.datetime) -> None:
        async with self.db.connect() as conn:
            open_rollouts = await rstore.list_rollouts(conn, OPEN_STATUSES)
        for rollout in open_rollouts:
            async with self.db.transaction() as conn:
                job_ids = await self.advance(conn, rollout["id"], now)
            for job_id in job_ids:
                await self.coordinator.updates.dispatch(job_id=job_id)

    async def advance(self, conn: AsyncConnection, rollout_id: int, now: dt.datetime) -> list[int]:
        """One step of one rollout; returns the jobs it created (to dispatch after commit)."""
        rollout = await rstore.get_rollout(conn, rollout_id, lock=True)
        if rollout["status"] not in OPEN_STATUSES:
            return []
        machines = await rstore.machines_of(conn, rollout_id)
        if now - (rollout["last_targeting_at"] or now) >= dt.timedelta(seconds=RETARGET_SECONDS):
            machines = await self._add_late_joiners(conn, rollout, machines, now)
        await self._settle(conn, machines, now)
        plan_size = len(rollout["percents"].split(","))
        verdicts = self._verdicts(machines, plan_size)
        action = waves.next_action(rollout["status"], rollout["sent_waves"], verdicts)
        sent_waves = rollout["sent_waves"]
        if action.kind is waves.ActionKind.SEND_WAVE and action.wave is not None:
            sent_waves = action.wave + 1
            await rstore.update_rollout(conn, rollout_id, sent_waves=sent_waves,
                                        reason=action.reason, updated_at=now)
        elif action.kind is waves.ActionKind.PAUSE:
            await self._pause(conn, rollout, machines, action.reason, now)
            return []
        elif action.kind is waves.ActionKind.COMPLETE:
            waiting = sum(1 for m in machines if m["wave"] is not None and m["state"] == "pending")
            if waiting:  # offline machines catch up when they are back; stay open for them
                await rstore.update_rollout(
                    conn, rollout_id, updated_at=now,
                    reason=f"every wave passed; waiting for {waiting} offline machines")
                return await self._send(conn, rollout, machines, sent_waves, now)
            await rstore.update_rollout(conn, rollout_id, status="completed",
                                        reason=action.reason, updated_at=now)
            await store.record_audit(conn, actor=f"rollout:{rollout_id}",
                                     action="rollout.complete", target=f"rollout:{rollout_id}",
                                     detail={}, now=now)
            return []
        if rollout["status"] != "running":
            return []
        await self._watch_deadline(conn, rollout, machines, now)
        return await self._send(conn, rollout, machines, sent_waves, now)

    def _verdicts(self, machines: list[dict[str, Any]], plan_size: int) -> list[waves.WaveVerdict]:
        states: list[list[str]] = [[] for _ in range(plan_size)]
        for machine in machines:
            if machine["wave"] is not None and machine["wave"] < plan_size:
                states[machine["wave"]].append(self._outcome(machine))
        # Planning drops waves that would be empty; so do the verdicts.
        while states and not states[-1]:
            states.pop()
        return [waves.evaluate_wave(waves.wave_counts(s), self.rules) for s in states]

    def _outcome(self, machine: dict[str, Any]) -> str:
        state = machine["state"]
        agent_id = machine["agent_id"]
        if state in ("pending", "sent") and agent_id not in self.coordinator.links and (
                not self.coordinator.held_elsewhere(agent_id, machine)):
            return "offline"
        return state

    async def _settle(self, conn: AsyncConnection, machines: list[dict[str, Any]],
                      now: dt.datetime) -> None:
        """Move sent machines on from their job parts; time out the silent ones."""
        for machine in machines:
            if machine["state"] != "sent":
                continue
            status = machine["job_status"]
            if status in _SUCCEEDED:
                new, detail = "succeeded", status
            elif status in _FAILED:
                new, detail = "failed", status
            elif waves.effective_state("sent", machine["sent_at"], now,
                                       self.rules.install_timeout) is waves.MachineOutcome.TIMED_OUT:
                new, detail = "timed_out", f"no result within {self.rules.install_timeout}"
            else:
                continue
            await rstore.set_machine(conn, machine["id"], state=new, finished_at=now,
                                     detail=detail)
            machine.update(state=new, finished_at=now, detail=detail)

    async def _send(self, conn: AsyncConnection, rollout: dict[str, Any],
                    machines: list[dict[str, Any]], sent_waves: int, now: dt.datetime) -> list[int]:
        """Create one job for every pending machine of a sent wave that may install now."""
        ready = []
        customers: dict[int, dict[str, Any]] = {}
        for machine in machines:
            if machine["state"] != "pending" or machine["wave"] is None:
                continue
            if machine["wave"] >= sent_waves or machine["agent_id"] not in self.coordinator.links:
                continue  # offline machines get it when they are back (next tick)
            agent = await store.agent_by_id(conn, machine["agent_id"])
            if agent is None:
                continue
            customer = customers.get(agent["customer_id"]) or await store.get_customer(
                conn, agent["customer_id"])
            customers[customer["id"]] = customer
            window = (waves.InstallWindow.parse(customer["install_window"])
                      if customer.get("install_window") else None)
            # Updating the agent itself interrupts no one: its running never holds a wave back.
            running = rollout["product"] != AGENT_PRODUCT and any(
                p["name"] == rollout["product"] and p["running"]
                for p in (agent["health"] or {}).get("products", []))
            decision = waves.install_window_open(
                now, window, customer["timezone"], running,
                rollout["effective"] or now.date() + dt.timedelta(days=365),
                self.rules.window_override_days)
            if decision.open:
                ready.append(machine)
        if not ready:
            return []
        job = await create_job(
            conn, kind="update", agent_ids=[m["agent_id"] for m in ready],
            actor=f"rollout:{rollout['id']}", product=rollout["product"],
            version=rollout["version"], reason=f"rollout {rollout['id']}", now=now)
        for machine in ready:
            await rstore.set_machine(conn, machine["id"], state="sent", job_id=job["id"],
                                     sent_at=now)
        return [job["id"]]

    async def _pause(self, conn: AsyncConnection, rollout: dict[str, Any],
                     machines: list[dict[str, Any]], reason: str, now: dt.datetime) -> None:
        """Stop sending and open an update_failed incident on each failed machine."""
        await rstore.update_rollout(conn, rollout["id"], status="paused", reason=reason,
                                    updated_at=now)
        failed = {
            (m["agent_id"], "update_failed", rollout["product"]):
                (True, f"rollout {rollout['id']} of {rollout['version']}: {m['detail']}")
            for m in machines if m["state"] in ("failed", "timed_out")
        }
        await self.coordinator.desk.observe(conn, failed, now)
        await store.record_audit(conn, actor=f"rollout:{rollout['id']}", action="rollout.pause",
                                 target=f"rollout:{rollout['id']}", detail={"reason": reason},
                                 now=now)

    async def _add_late_joiners(self, conn: AsyncConnection, rollout: dict[str, Any],
                                machines: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
        """Machines enrolled, updated to need it, or newly covered since: join the rollout."""
        await rstore.update_rollout(conn, rollout["id"], last_targeting_at=now)
        known = {m["agent_id"] for m in machines if m["wave"] is not None}
        listed_uncovered = {m["agent_id"]: m for m in machines if m["wave"] is None}
        covered, not_covered = await self._targets(conn, rollout, known, now)
        verdicts = self._verdicts(machines, len(rollout["percents"].split(",")))
        placement = waves.place_late_joiner(rollout["status"], rollout["sent_waves"], verdicts)
        rows = []
        for agent in covered:
            if placement.wave is None:
                break
            if agent["id"] in listed_uncovered:  # renewed: now covered
                await rstore.set_machine(conn, listed_uncovered[agent["id"]]["id"],
                                         wave=placement.wave, state="pending", detail="renewed")
            else:
                rows.append({"rollout_id": rollout["id"], "agent_id": agent["id"],
                             "customer_id": agent["customer_id"], "wave": placement.wave,
                             "state": "pending", "detail": placement.reason})
        rows += [self._not_covered_row(rollout["id"], a, reason)
                 for a, reason in not_covered if a["id"] not in listed_uncovered]
        await rstore.add_machines(conn, rows)
        return await rstore.machines_of(conn, rollout["id"]) if rows or covered else machines

    async def _watch_deadline(self, conn: AsyncConnection, rollout: dict[str, Any],
                              machines: list[dict[str, Any]], now: dt.datetime) -> None:
        """Covered machines still without the update close to the effective date: incident."""
        if rollout["effective"] is None or not waves.deadline_due(
                rollout["effective"], now, self.rules.deadline_days):
            return
        late = [m for m in machines if m["wave"] is not None and m["state"] != "succeeded"
                and not m["deadline_incident"]]
        checks = {
            (m["agent_id"], "regulation_deadline", rollout["product"]):
                (True, f"{rollout['product']} {rollout['version']} effective "
                       f"{rollout['effective']}: still {m['state']}")
            for m in late
        }
        await self.coordinator.desk.observe(conn, checks, now)
        for machine in late:
            await rstore.set_machine(conn, machine["id"], deadline_incident=True)

    # ------------------------------------------------------------------ operator actions
    async def set_status(self, conn: AsyncConnection, rollout_id: int, status: str, actor: str,
                         now: dt.datetime) -> dict[str, Any]:
        rollout = await rstore.get_rollout(conn, rollout_id)
        allowed = {"paused": ("running",), "running": ("paused",),
                   "cancelled": ("running", "paused")}
        if rollout["status"] not in allowed[status]:
            raise Conflict(f"rollout {rollout_id} is {rollout['status']}; cannot make it {status}")
        await rstore.update_rollout(conn, rollout_id, status=status, updated_at=now,
                                    reason=f"{status} by {actor}")
        await store.record_audit(conn, actor=actor, action=f"rollout.{status}",
                                 target=f"rollout:{rollout_id}", detail={}, now=now)
        return await rstore.get_rollout(conn, rollout_id)

    async def summary(self, conn: AsyncConnection, rollout_id: int, now: dt.datetime) -> dict[str, Any]:
        rollout = await rstore.get_rollout(conn, rollout_id)
        machines = await rstore.machines_of(conn, rollout_id)
        plan_size = len(rollout["percents"].split(","))
        verdicts = self._verdicts(machines, plan_size)
        rollout["waves"] = []
        for index, verdict in enumerate(verdicts):
            wave = [m for m in machines if m["wave"] == index]
            counts = waves.wave_counts(self._outcome(m) for m in wave)
            rollout["waves"].append({
                "wave": index + 1, "targeted": counts.targeted, "succeeded": counts.succeeded,
                "failed": counts.failed, "pending": counts.pending, "offline": counts.offline,
                "sent": index < rollout["sent_waves"], "verdict": str(verdict.status),
                "reason": verdict.reason,
            })
        rollout["not_covered"] = [
            {"machine": m["agent_id"], "hostname": m["hostname"], "customer": m["customer"],
             "detail": m["detail"]}
            for m in machines if m["wave"] is None
        ]
        rollout["machines"] = [
            {"machine": m["agent_id"], "hostname": m["hostname"], "customer": m["customer"],
             "wave": m["wave"] + 1, "state": self._outcome(m), "job": m["job_id"],
             "detail": m["detail"]}
            for m in machines if m["wave"] is not None
        ]
        return rollout


async def release_by_id(conn: AsyncConnection, release_id: int) -> dict[str, Any]:
    for release in await ustore.list_releases(conn):
        if release["id"] == release_id:
            return release
    raise ConfigError(f"no release {release_id}")
