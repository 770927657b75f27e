"""Rollouts: one release pushed to every machine that needs it, in staged waves.

The I/O shell around coordinator.policy.waves. Every step is stored in the same
transaction as the job it creates, so a coordinator killed at any instant resumes where it
stood: a machine is sent its job exactly once, and every count is derived from rows.

Targeting never lets a covered machine slip (issue 11): each tick looks again at the
machines whose targeting inputs changed (agents.targeting_changed_at: a version report or
job result, an enrollment's first report, a contract or maintenance package added), in one
query, and at every machine every FULL_RETARGET. A regulation rollout does not complete
while a covered machine lacks the update, and a completed one keeps watching for machines
that join or fall behind later, reopening for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.notify.events import notify_rollout
from careline.coordinator.policy import waves
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import rollouts as rstore
from careline.coordinator.storage import service
from careline.coordinator.storage import updates as ustore
from careline.coordinator.updates import UpdateService, create_job
from careline.shared import protocol as p
from careline.shared.errors import ConfigError, Conflict
from careline.shared.protocol import AGENT_PRODUCT

if TYPE_CHECKING:
    from careline.coordinator.hub import AgentHub
    from careline.coordinator.incidents import IncidentDesk
    from careline.coordinator.policy.overrides import PolicyLayers
    from careline.coordinator.storage.db import Database

log = logging.getLogger("careline.coordinator")

TICK_SECONDS = 2.0
MIN_TICK_SECONDS = 0.5  # between ticks brought forward by settled machines
# Each tick re-targets the machines changed since the last look minus this margin: the
# clocks of several coordinator processes, and transactions that commit late, must not
# hide a change. Looking at a machine twice is harmless.
RETARGET_OVERLAP = dt.timedelta(seconds=60)
# ... and every machine this often (and on a process's first tick of each rollout).
FULL_RETARGET = dt.timedelta(minutes=10)
# Job-part statuses of the agent's install, as rollout machine states.
_SUCCEEDED = frozenset({"installed"})
_FAILED = frozenset({"rolled_back", "refused", "failed", "cancelled"})
OPEN_STATUSES = ("running", "paused")
# A pending machine of a sent wave held back by its install window (or running product).
WINDOW_WAIT = "waiting for install window: "
INSTALL_WINDOW_KEY = "rollouts.install_window"  # the policy value (overrides.py)


def product_report(products: list[dict[str, Any]] | None, product: str) -> tuple[bool, str | None]:
    """(watched, reported version) of `product` in a machine's last reported products."""
    for reported in products or []:
        if reported.get("name") == product:
            version = reported.get("version")
            return True, str(version) if version else None
    return False, None


def _versions(products: list[dict[str, Any]] | None) -> tuple[tuple[Any, Any], ...]:
    return tuple((x.get("name"), x.get("version")) for x in products or [])


def covers(includes: dict[str, Any], kind: str) -> bool:
    """Whether coverage includes a release of this kind free of charge."""
    if kind == "regulation":
        return bool(includes["regulation_updates"])
    if kind == "bugfix":
        return bool(includes["bug_fixes"])
    return True  # a feature rollout is a technician's explicit choice (an upgrade sold)


class _Windows:
    """Each machine's install window (`rollouts.install_window`) and the level that set it,
    from the overrides read once per tick; each distinct window is parsed once."""

    def __init__(self, layers: PolicyLayers, by_target: dict[str, dict[str, Any]]) -> None:
        self.layers = layers
        self.by_target = by_target
        self.parsed: dict[str, waves.InstallWindow | None] = {}

    def __call__(self, agent: store.Agent) -> tuple[waves.InstallWindow | None, str]:
        text, source = self.layers.value(INSTALL_WINDOW_KEY, self.by_target, agent.customer_id,
                                         agent.site_id, agent.id)
        if text not in self.parsed:
            try:
                self.parsed[text] = waves.InstallWindow.setting(text)
            except ValueError as exc:  # checked when set: only a hand-edited database
                log.error("%s %r of machine %s ignored: %s", INSTALL_WINDOW_KEY, text, agent.id, exc)
                self.parsed[text] = None
        return self.parsed[text], source

class Rollouts:
    def __init__(self, db: Database, hub: AgentHub, desk: IncidentDesk, updates: UpdateService,
                 rules: waves.WaveRules | None = None) -> None:
        self.db = db
        self.hub = hub
        self.desk = desk  # entitlements, incidents, and the policy (tiers, install windows)
        self.updates = updates
        self.rules = rules or waves.WaveRules()
        # rollout id -> when this process last re-targeted it (any way / looking at all)
        self._last_look: dict[int, dt.datetime] = {}
        self._last_full: dict[int, dt.datetime] = {}
        self._versions: dict[str, tuple[Any, ...]] = {}  # agent id -> versions last reported
        # Set when a rollout starts, or a job result settled a machine of a rollout holding
        # back a wave: the next tick (and that wave) comes at once, not after TICK_SECONDS.
        self._wake = asyncio.Event()
        self._holding: set[int] = set()  # rollouts with a wave not sent yet, as of the last tick
        # rollout id -> its machines still pending or sent, as of the last tick, less those
        # settled since: at 0 the rollout may be complete, and the next tick comes at once.
        self._unsettled: dict[int, int] = {}
        updates.result_hooks.append(self._job_result)

    # ------------------------------------------------------------------ start
    async def start(
        self, conn: AsyncConnection, release: ustore.Release, *, actor: str,
        customer_id: int | None = None, percents: tuple[int, ...] | None = None,
        now: dt.datetime,
    ) -> int:
        percents = percents or self.rules.percents
        waves.WaveRules(percents=percents)  # validate before anything is stored
        for open_rollout in await rstore.list_rollouts(conn, OPEN_STATUSES):
            if open_rollout.release_id == release.id and (
                open_rollout.customer_id in (None, customer_id)
            ):
                raise Conflict(f"rollout {open_rollout.id} of this release is still open")
        rollout_id = await rstore.add_rollout(conn, {
            "release_id": release.id, "product": release.product,
            "version": release.version, "kind": release.kind,
            "effective": release.effective, "customer_id": customer_id,
            "percents": ",".join(map(str, percents)), "status": "running", "started_by": actor,
            "started_at": now, "updated_at": now, "last_targeting_at": now,
        })
        rollout = await rstore.get_rollout(conn, rollout_id)
        added = await self._retarget(conn, rollout, [], now)
        await store.record_audit(conn, actor=actor, action="rollout.start",
                                 target=f"rollout:{rollout_id}",
                                 detail={"release": release.id, **added}, now=now)
        self._wake.set()  # its first wave goes out at the next tick, after this commits
        return rollout_id

    def _suggestion(self, kind: str) -> str:
        """The tier to offer: the one with the fewest inclusions that covers this kind."""
        fitting = [t for t in self.desk.policy.tiers.values()
                   if covers({"regulation_updates": t.regulation_updates,
                              "bug_fixes": t.bug_fixes}, kind)]
        if not fitting:
            return "no maintenance tier includes it"
        return f"offer maintenance:{min(fitting, key=lambda t: t.rank).name}"

    # ------------------------------------------------------------------ targeting
    async def _retarget(
        self, conn: AsyncConnection, rollout: rstore.Rollout,
        machines: list[rstore.RolloutMachine] | None, now: dt.datetime,
    ) -> dict[str, int]:
        """Bring the rollout's scope up to date with the machines whose inputs changed since
        this process last looked (every machine on its first look and every FULL_RETARGET):
        new targets join a wave, the uncovered are listed, the renewed are moved into a
        wave, machines found on the version are settled. A completed rollout that gains a
        target reopens. `machines`: the rollout's rows, None to load them only if needed.
        Returns counts of what changed."""
        last, last_full = self._last_look.get(rollout.id), self._last_full.get(rollout.id)
        full = last is None or last_full is None or now - last_full >= FULL_RETARGET
        since = None if full or last is None else last - RETARGET_OVERLAP
        candidates = await rstore.targeting_candidates(
            conn, rollout.id, rollout.customer_id, since)
        self._last_look[rollout.id] = now
        if full:
            self._last_full[rollout.id] = now
            await rstore.update_rollout(conn, rollout.id, last_targeting_at=now)
        changed = {"targeted": 0, "not_covered": 0, "settled": 0}
        needing, reported = [], {}
        for agent in candidates:
            watching, version = product_report(agent.products, rollout.product)
            standing = waves.version_standing(watching, version, rollout.version)
            reported[agent.id] = version
            if standing is waves.Standing.CURRENT:
                if agent.row_id is not None and agent.row_state != "succeeded":
                    await rstore.set_machine(conn, agent.row_id, state="succeeded",
                                             finished_at=now, from_version=version,
                                             detail=f"runs {version}")
                    changed["settled"] += 1
            elif standing in (waves.Standing.BELOW, waves.Standing.UNKNOWN):
                if agent.row_state == "pending":
                    # its version became known: nothing else changes
                    if version and agent.row_id is not None:
                        await rstore.set_machine(conn, agent.row_id, from_version=version)
                elif agent.row_state in (None, "not_covered", "succeeded"):
                    needing.append(agent)  # new, perhaps renewed, or fallen behind
        if not needing:
            return changed
        # Covered on the effective date; once it has passed, covered now (a PC bought
        # after the date is owed the update under today's warranty or package).
        effective = rollout.effective
        on = effective if effective and waves.days_until(effective, now) > 0 else None
        entitlements = await self.desk.entitlements(
            conn, [agent.coverage_key for agent in needing], on, now)
        covered, rows = [], []
        for agent in needing:
            entitlement = entitlements[agent.id]
            if covers(entitlement.to_dict()["includes"], rollout.kind) and entitlement.covered:
                covered.append(agent)
            else:
                detail = (f"{entitlement.label} on {entitlement.at}; "
                          f"{self._suggestion(rollout.kind)}")
                if agent.row_id is None:
                    rows.append({"rollout_id": rollout.id, "agent_id": agent.id,
                                 "customer_id": agent.customer_id, "wave": None,
                                 "state": "not_covered", "from_version": reported[agent.id],
                                 "detail": detail})
                elif agent.row_state == "succeeded":  # fell behind, no longer covered
                    await rstore.set_machine(conn, agent.row_id, wave=None,
                                             state="not_covered", detail=detail,
                                             from_version=reported[agent.id])
                    changed["settled"] += 1
        changed["not_covered"] = len(rows)
        if machines is None:
            machines = await rstore.machines_of(conn, rollout.id)
        placed = self._place(rollout, machines, covered)
        for agent in covered:
            wave, reason = placed[agent.id]
            if agent.row_id is not None:  # renewed, or installed and fallen behind
                why = ("renewed" if agent.row_state == "not_covered" else
                       f"fell behind: runs {reported[agent.id] or 'an unknown version'}")
                await rstore.set_machine(conn, agent.row_id, wave=wave, state="pending",
                                         from_version=reported[agent.id], job_id=None,
                                         sent_at=None, finished_at=None,
                                         detail=f"{why}; {reason}".strip("; "))
            else:
                rows.append({"rollout_id": rollout.id, "agent_id": agent.id,
                             "customer_id": agent.customer_id, "wave": wave,
                             "state": "pending", "from_version": reported[agent.id],
                             "detail": reason})
        await rstore.add_machines(conn, rows)
        changed["targeted"] = len(covered)
        if covered and rollout.status == "completed":
            reason = f"reopened: {len(covered)} more machine(s) need {rollout.version}"
            await rstore.update_rollout(conn, rollout.id, status="running", reason=reason,
                                        updated_at=now)
            await store.record_audit(conn, actor=f"rollout:{rollout.id}",
                                     action="rollout.reopen", target=f"rollout:{rollout.id}",
                                     detail={"machines": [a.id for a in covered]}, now=now)
        return changed

    def _place(self, rollout: rstore.Rollout, machines: list[rstore.RolloutMachine],
               covered: list[rstore.TargetingCandidate]) -> dict[str, tuple[int, str]]:
        """Wave and reason for each new target. The first targets of a rollout are planned
        as at the start (canary first); later ones join where place_late_joiner says."""
        if not any(m.wave is not None for m in machines):
            plan = waves.plan_waves([waves.Target(a.id, a.customer_id) for a in covered],
                                    tuple(int(x) for x in rollout.percents.split(",")),
                                    seed=f"release-{rollout.release_id}")
            return {agent_id: (index, "") for index, wave in enumerate(plan)
                    for agent_id in wave}
        verdicts = self._verdicts(machines, len(rollout.percents.split(",")))
        status = "running" if rollout.status == "completed" else rollout.status
        placement = waves.place_late_joiner(status, min(rollout.sent_waves, len(verdicts)),
                                            verdicts)
        wave = placement.wave if placement.wave is not None else max(len(verdicts) - 1, 0)
        return {a.id: (wave, placement.reason) for a in covered}

    async def on_heartbeats(self, conn: AsyncConnection, batch: Mapping[str, p.Health],
                            now: dt.datetime) -> None:
        """Heartbeats about to be stored (call before storing them): machines whose reported
        product versions differ from what is stored are re-targeted on the next tick.

        What is stored is remembered per process, so a machine costs a read (one query for
        the batch) only when first heard of here or after a change: a changed machine is
        forgotten rather than remembered as changed, so if this transaction fails, its
        next report is compared with the database again and marked again."""
        reported = {agent_id: tuple((x.name, x.version) for x in health.products)
                    for agent_id, health in batch.items()}
        unseen = [agent_id for agent_id in reported if agent_id not in self._versions]
        if unseen:
            for agent_id, products in (await rstore.stored_products(conn, unseen)).items():
                self._versions[agent_id] = _versions(products)
        changed = [a for a, versions in reported.items() if self._versions.get(a) != versions]
        for agent_id in changed:
            self._versions.pop(agent_id, None)
        if changed:
            await rstore.mark_targeting_changed(conn, now, agent_ids=changed)

    # ------------------------------------------------------------------ the loop
    async def run_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            if self._wake.is_set():  # brought forward: what woke it has committed by then,
                await asyncio.sleep(MIN_TICK_SECONDS)  # and results arriving together
                self._wake.clear()  # make one tick
            try:
                await self.tick(dt.datetime.now(dt.UTC))
            except Exception:
                log.exception("rollout tick failed; will retry")

    async def _job_result(self, conn: AsyncConnection, part: ustore.JobPart, outcome: str,
                          now: dt.datetime) -> None:
        """A job part's result settles its rollout machine in the same transaction, so a
        wave's verdict is known as soon as its results are stored."""
        state = ("succeeded" if outcome in _SUCCEEDED else
                 "failed" if outcome in _FAILED else None)
        if state is None:
            return
        rollout_id = await rstore.settle_job_part(conn, part.job_id, part.agent_id,
                                                  state, outcome, now)
        if rollout_id is None:
            return
        left = self._unsettled[rollout_id] = self._unsettled.get(rollout_id, 1) - 1
        if rollout_id in self._holding or left <= 0:
            self._wake.set()

    async def tick(self, now: dt.datetime) -> None:
        async with self.db.connect() as conn:
            rollouts = waves.watched(await rstore.list_rollouts(
                conn, (*OPEN_STATUSES, "completed")))
        for rollout in rollouts:
            async with self.db.transaction() as conn:
                job_ids = await self.advance(conn, rollout.id, now)
            for job_id in job_ids:
                await self.updates.dispatch(job_id=job_id)

    async def advance(self, conn: AsyncConnection, rollout_id: int, now: dt.datetime) -> list[int]:
        """One step of one rollout; returns the jobs it created (to dispatch after commit)."""
        rollout = await rstore.get_rollout(conn, rollout_id, lock=True)
        if rollout.status not in (*OPEN_STATUSES, "completed"):
            return []
        if rollout.status == "completed":  # watching: its rows are read only if it reopens
            await self._retarget(conn, rollout, None, now)
            rollout = await rstore.get_rollout(conn, rollout_id)  # reopened, perhaps
            if rollout.status == "completed":
                return []
            machines = await rstore.machines_of(conn, rollout_id)
        else:
            machines = await rstore.machines_of(conn, rollout_id)
            if any((await self._retarget(conn, rollout, machines, now)).values()):
                machines = await rstore.machines_of(conn, rollout_id)
        await self._settle(conn, rollout, machines, now)
        plan_size = len(rollout.percents.split(","))
        verdicts = self._verdicts(machines, plan_size)
        sent_waves = min(rollout.sent_waves, len(verdicts))
        action = waves.next_action(rollout.status, sent_waves, verdicts)
        sending = action.wave + 1 if action.kind is waves.ActionKind.SEND_WAVE and (
            action.wave is not None) else sent_waves
        delivering = (sending if rollout.status == "running"
                      and action.kind is not waves.ActionKind.PAUSE else 0)
        await self._watch_deadline(conn, rollout, machines, delivering, now)
        if sending < len(verdicts):  # a wave still held: its machines' results bring the
            self._holding.add(rollout_id)  # next tick forward
        else:
            self._holding.discard(rollout_id)
        self._unsettled[rollout_id] = sum(1 for m in machines if m.state in ("pending", "sent"))
        if action.kind is waves.ActionKind.SEND_WAVE and action.wave is not None:
            sent_waves = action.wave + 1
            await rstore.update_rollout(conn, rollout_id, sent_waves=sent_waves,
                                        reason=action.reason, updated_at=now)
        elif action.kind is waves.ActionKind.PAUSE:
            await self._pause(conn, rollout, machines, action.reason, now)
            return []
        elif action.kind is waves.ActionKind.COMPLETE:
            still_open = waves.open_reason(rollout.kind, [m.state for m in machines])
            if still_open:  # offline machines catch up when they are back; stay open for them
                if still_open != rollout.reason:
                    await rstore.update_rollout(conn, rollout_id, updated_at=now,
                                                reason=still_open)
                return await self._send(conn, rollout, machines, sent_waves, now)
            await rstore.update_rollout(conn, rollout_id, status="completed",
                                        reason=action.reason, updated_at=now)
            await store.record_audit(conn, actor=f"rollout:{rollout_id}",
                                     action="rollout.complete", target=f"rollout:{rollout_id}",
                                     detail={}, now=now)
            return []
        if rollout.status != "running":
            return []
        return await self._send(conn, rollout, machines, sent_waves, now)

    def _verdicts(self, machines: list[rstore.RolloutMachine], plan_size: int) -> list[waves.WaveVerdict]:
        states: list[list[str]] = [[] for _ in range(plan_size)]
        for machine in machines:
            if machine.wave is not None and machine.wave < plan_size and (
                    machine.state not in waves.EXCUSED):
                states[machine.wave].append(self._outcome(machine))
        # Planning drops waves that would be empty; so do the verdicts.
        while states and not states[-1]:
            states.pop()
        return [waves.evaluate_wave(waves.wave_counts(s), self.rules) for s in states]

    def _online(self, machine: rstore.RolloutMachine) -> bool:
        return machine.agent_id in self.hub.links or self.hub.held_elsewhere(machine.presence)

    def _outcome(self, machine: rstore.RolloutMachine) -> str:
        state: str = machine.state
        if state in ("pending", "sent") and not self._online(machine):
            return "offline"
        return state

    async def _settle(self, conn: AsyncConnection, rollout: rstore.Rollout,
                      machines: list[rstore.RolloutMachine], now: dt.datetime) -> None:
        """Move sent machines on from their job parts; time out the silent ones (handed to
        a technician with an update_failed incident); retire revoked machines. `machines`
        is updated in place for the steps after this one."""
        timed_out = {}
        for index, machine in enumerate(machines):
            if machine.presence.revoked_at is not None and machine.state not in (
                    "succeeded", "retired"):
                new, detail = "retired", f"revoked {machine.presence.revoked_at:%Y-%m-%d %H:%M}Z"
            elif machine.state != "sent":
                continue
            elif machine.job_status in _SUCCEEDED:
                new, detail = "succeeded", machine.job_status
            elif machine.job_status in _FAILED:
                new, detail = "failed", machine.job_status
            elif waves.effective_state("sent", machine.sent_at, now,
                                       self.rules.install_timeout) is waves.MachineOutcome.TIMED_OUT:
                new, detail = "timed_out", f"no result within {self.rules.install_timeout}"
                timed_out[(machine.agent_id, "update_failed", rollout.product)] = (
                    True, f"rollout {rollout.id} of {rollout.version}: {detail}")
            else:
                continue
            await rstore.set_machine(conn, machine.id, state=new, finished_at=now,
                                     detail=detail)
            machines[index] = dataclasses.replace(machine, state=new, finished_at=now,
                                                  detail=detail)
        if timed_out:
            await self.desk.observe(conn, timed_out, now)

    async def _send(self, conn: AsyncConnection, rollout: rstore.Rollout,
                    machines: list[rstore.RolloutMachine], sent_waves: int, now: dt.datetime) -> list[int]:
        """Create one job for every pending machine of a sent wave that may install now."""
        ready = []
        customers: dict[int, store.Customer] = {}
        window_of = _Windows(self.desk.layers,
                             await service.overrides_by_target(conn))
        for machine in machines:
            if machine.state != "pending" or machine.wave is None:
                continue
            if machine.wave >= sent_waves or machine.agent_id not in self.hub.links:
                continue  # offline machines get it when they are back (next tick)
            agent = await store.agent_by_id(conn, machine.agent_id)
            if agent is None:
                continue
            customer = customers.get(agent.customer_id) or await store.get_customer(
                conn, agent.customer_id)
            customers[customer.id] = customer
            window, source = window_of(agent)
            # Updating the agent itself interrupts no one: its running never holds a wave back.
            running = rollout.product != AGENT_PRODUCT and any(
                x["name"] == rollout.product and x["running"]
                for x in agent.products)
            decision = waves.install_window_open(
                now, window, customer.timezone, running,
                rollout.effective or now.date() + dt.timedelta(days=365),
                self.rules.window_override_days)
            reason = decision.reason + (f" ({source} policy)" if window else "")
            if decision.open:
                ready.append((machine, reason))
            elif machine.detail != WINDOW_WAIT + reason:
                await rstore.set_machine(conn, machine.id, detail=WINDOW_WAIT + reason)
        if not ready:
            return []
        job = await create_job(
            conn, kind="update", agent_ids=[m.agent_id for m, _ in ready],
            actor=f"rollout:{rollout.id}", product=rollout.product,
            version=rollout.version, reason=f"rollout {rollout.id}", now=now)
        for machine, reason in ready:
            await rstore.set_machine(conn, machine.id, state="sent", job_id=job["id"],
                                     sent_at=now, detail=reason)
        return [job["id"]]

    async def _pause(self, conn: AsyncConnection, rollout: rstore.Rollout,
                     machines: list[rstore.RolloutMachine], reason: str, now: dt.datetime) -> None:
        """Stop sending and open an update_failed incident on each failed machine."""
        await rstore.update_rollout(conn, rollout.id, status="paused", reason=reason,
                                    updated_at=now)
        failed = {
            (m.agent_id, "update_failed", rollout.product):
                (True, f"rollout {rollout.id} of {rollout.version}: {m.detail}")
            for m in machines if m.state in ("failed", "timed_out")
        }
        await self.desk.observe(conn, failed, now)
        await notify_rollout(conn, "rollout.paused", rollout,
                             [m for m in machines if m.state in ("failed", "timed_out")],
                             reason, now)
        await store.record_audit(conn, actor=f"rollout:{rollout.id}", action="rollout.pause",
                                 target=f"rollout:{rollout.id}", detail={"reason": reason},
                                 now=now)

    async def _watch_deadline(self, conn: AsyncConnection, rollout: rstore.Rollout,
                              machines: list[rstore.RolloutMachine], delivering: int,
                              now: dt.datetime) -> None:
        """Covered machines still without the update close to the effective date, that the
        rollout is not delivering now (waves.deadline_at_risk): incident. Runs while the
        rollout is paused too, and for machines that joined late. `delivering`: how many
        waves this tick sends to (0 when paused)."""
        if rollout.effective is None or not waves.deadline_due(
                rollout.effective, now, self.rules.deadline_days):
            return
        late = [m for m in machines if m.wave is not None and not m.deadline_incident
                and waves.deadline_at_risk(
                    m.state, online=self._online(m),
                    delivering=m.wave < delivering
                    and not (m.detail or "").startswith(WINDOW_WAIT))]
        checks = {
            (m.agent_id, "regulation_deadline", rollout.product):
                (True, f"{rollout.product} {rollout.version} effective "
                       f"{rollout.effective}: still {m.state}")
            for m in late
        }
        await self.desk.observe(conn, checks, now)
        await notify_rollout(conn, "rollout.deadline_at_risk", rollout, late,
                             f"effective {rollout.effective}", now)
        for machine in late:
            await rstore.set_machine(conn, machine.id, deadline_incident=True)

    # ------------------------------------------------------------------ operator actions
    async def set_status(self, conn: AsyncConnection, rollout_id: int, status: str, actor: str,
                         now: dt.datetime) -> rstore.Rollout:
        rollout = await rstore.get_rollout(conn, rollout_id)
        # Cancelling a completed rollout stops it watching for machines that fall behind.
        allowed = {"paused": ("running",), "running": ("paused",),
                   "cancelled": ("running", "paused", "completed")}
        if rollout.status not in allowed[status]:
            raise Conflict(f"rollout {rollout_id} is {rollout.status}; cannot make it {status}")
        await rstore.update_rollout(conn, rollout_id, status=status, updated_at=now,
                                    reason=f"{status} by {actor}")
        await store.record_audit(conn, actor=actor, action=f"rollout.{status}",
                                 target=f"rollout:{rollout_id}", detail={}, now=now)
        return await rstore.get_rollout(conn, rollout_id)

    async def summary(self, conn: AsyncConnection, rollout_id: int, now: dt.datetime) -> dict[str, Any]:
        """The rollout, its waves, and every machine in scope with its state; `counts` adds
        up to `in_scope`."""
        rollout = await rstore.get_rollout(conn, rollout_id)
        machines = await rstore.machines_of(conn, rollout_id)
        plan_size = len(rollout.percents.split(","))
        verdicts = self._verdicts(machines, plan_size)
        view: dict[str, Any] = {**dataclasses.asdict(rollout), "waves": []}
        for index, verdict in enumerate(verdicts):
            wave = [m for m in machines if m.wave == index and m.state not in waves.EXCUSED]
            counts = waves.wave_counts(self._outcome(m) for m in wave)
            view["waves"].append({
                "wave": index + 1, "targeted": counts.targeted, "succeeded": counts.succeeded,
                "failed": counts.failed, "pending": counts.pending, "offline": counts.offline,
                "sent": index < rollout.sent_waves, "verdict": str(verdict.status),
                "reason": verdict.reason,
            })
        overdue = rollout.effective is not None and waves.days_until(
            rollout.effective, now) <= 0
        view["not_covered"] = [
            {"machine": m.agent_id, "hostname": m.presence.hostname, "customer": m.customer,
             "detail": m.detail}
            for m in machines if m.state == "not_covered"
        ]
        view["machines"] = [
            {"machine": m.agent_id, "hostname": m.presence.hostname, "customer": m.customer,
             "wave": None if m.wave is None else m.wave + 1,
             "state": str(waves.scope_state(
                 m.state, wave_sent=m.wave is not None and m.wave < rollout.sent_waves,
                 online=self._online(m), window_closed=m.detail.startswith(WINDOW_WAIT),
                 version_known=m.from_version is not None, overdue=overdue)),
             "stage": m.state, "version": m.from_version, "job": m.job_id,
             "detail": m.detail}
            for m in machines
        ]
        tally = Counter(m["state"] for m in view["machines"])
        view["counts"] = {str(state): tally.get(str(state), 0) for state in waves.ScopeState}
        view["in_scope"] = len(machines)
        return view


async def release_by_id(conn: AsyncConnection, release_id: int) -> ustore.Release:
    for release in await ustore.list_releases(conn):
        if release.id == release_id:
            return release
    raise ConfigError(f"no release {release_id}")
