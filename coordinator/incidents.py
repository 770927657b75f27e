"""Incidents: from agent reports and technicians to decisions, visits and jobs.

The thin I/O shell around the pure policy: it loads what `entitlement_at`, `observe` and
`decide` need from storage, calls them, and stores what they return.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.notify.events import notify_incident
from careline.coordinator.policy.alerts import ConditionState, Transition, observe, touch
from careline.coordinator.policy.calendar import BusinessCalendar
from careline.coordinator.policy.config import WEEKDAYS, Policy
from careline.coordinator.policy.decide import IncidentFacts, MachineState, Pause, decide
from careline.coordinator.policy.entitlement import (
    NOTHING,
    Entitlement,
    MaintenancePackage,
    entitlement_at,
    expiring,
)
from careline.coordinator.policy.offline import Presence, offline_check, silent_for
from careline.coordinator.policy.overrides import OVERRIDE_LEVELS, PolicyLayers, chain
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import notify as nstore
from careline.coordinator.storage import service
from careline.coordinator.storage import updates as ustore
from careline.coordinator.storage.db import Database
from careline.coordinator.updates import JobKind, create_job
from careline.shared import protocol as p
from careline.shared.errors import CarelineError, ConfigError
from careline.shared.package import parse_version

log = logging.getLogger("careline.coordinator")

# Problems the agent reports in every heartbeat (level-triggered conditions).
HEARTBEAT_KINDS = (
    "disk_full", "disk_failing", "product_not_running", "product_crash_loop",
    "integrity_mismatch",
)
# Open incidents one machine may have of one kind (one per disk or product subject): a
# hostile agent reporting hundreds of subjects opens this many, not hundreds of visits.
MAX_OPEN_PER_KIND = 5
ONSITE_ACTIONS = frozenset({"onsite_reinstall", "technician_visit", "physical_media"})
# An agent's update_result outcome -> whether it is a failing update_failed check.
UPDATE_OUTCOMES = {"installed": False, "rolled_back": True, "failed": True, "refused": True}
# Remote decisions carried out by an update job (issue 6): action -> job kind.
JOB_ACTIONS: dict[str, JobKind] = {"remote_update": "update", "remote_reinstall": "reinstall"}


def _newer(version: str, than: str | None) -> bool:
    try:
        return than is None or parse_version(version) > parse_version(than)
    except ConfigError:
        return False

ConditionKey = tuple[str, str, str]  # agent id, kind, subject


def customer_calendar(
    policy: Policy, customer: store.Customer,
    closures: tuple[tuple[dt.date, dt.date], ...] = (),
) -> BusinessCalendar:
    """The policy's business calendar in the customer's time zone and hours, with the
    customer's own closures."""
    default = policy.calendar
    workdays = default.workdays
    if customer.workdays:
        workdays = frozenset(WEEKDAYS.index(d) for d in customer.workdays.split(","))
    return dataclasses.replace(
        default, timezone=customer.timezone, workdays=workdays,
        opens=dt.time.fromisoformat(customer.opens) if customer.opens else default.opens,
        closes=dt.time.fromisoformat(customer.closes) if customer.closes else default.closes,
        closures=closures,
    )


async def load_calendar(
    conn: AsyncConnection, policy: Policy, customer: store.Customer
) -> BusinessCalendar:
    """A customer's calendar with their closures, read from storage."""
    closures = await service.list_closures(conn, customer.id)
    return customer_calendar(policy, customer, tuple(
        (row.first_day, row.last_day) for row in closures))


def _state_to_json(state: ConditionState) -> dict[str, Any]:
    data = dataclasses.asdict(state)
    data["first_seen"] = state.first_seen.isoformat()
    data["last_seen"] = state.last_seen.isoformat()
    return data


def _state_from_json(data: dict[str, Any]) -> ConditionState:
    return ConditionState(**{
        **data,
        "first_seen": dt.datetime.fromisoformat(data["first_seen"]),
        "last_seen": dt.datetime.fromisoformat(data["last_seen"]),
    })


class IncidentDesk:
    def __init__(self, db: Database, layers: PolicyLayers, offline_after: dt.timedelta) -> None:
        self.db = db
        self.layers = layers
        self.policy = layers.resolve()  # the vendor's: before any customer's overrides
        self.offline_after = offline_after
        self._bad_overrides: set[str] = set()  # logged once each

    # ------------------------------------------------------------------ policy
    def policy_of(self, by_target: dict[str, dict[str, Any]], customer_id: int,
                  site_id: int | None, agent_id: str) -> Policy:
        """The effective policy of one machine: vendor, then its customer's, site's and
        own overrides (`by_target` from service.overrides_by_target)."""
        if not by_target:
            return self.policy
        try:
            return self.layers.resolve(chain(by_target, customer_id, site_id, agent_id))
        except ConfigError as exc:
            # Stored overrides the vendor's current policy file no longer accepts (a rule
            # or key gone): this machine runs on the vendor's policy until they are unset.
            if str(exc) not in self._bad_overrides:
                self._bad_overrides.add(str(exc))
                log.error("policy overrides of machine %s ignored: %s", agent_id, exc)
            return self.policy

    async def policy_for(self, conn: AsyncConnection, agent: store.Agent) -> Policy:
        return self.policy_of(await service.overrides_by_target(conn), agent.customer_id,
                              agent.site_id, agent.id)

    async def urgent_from(self, conn: AsyncConnection, agent_id: str) -> str:
        """The machine's `notify.urgent_from`: how severe an incident notification must be
        to ignore quiet hours (notify_incident)."""
        agent = await store.agent_by_id(conn, agent_id)
        return self.policy.urgent_from if agent is None else (
            await self.policy_for(conn, agent)).urgent_from

    # ------------------------------------------------------------------ entitlement
    async def entitlement(
        self, conn: AsyncConnection, agent: store.Agent, at: dt.date | None = None,
        now: dt.datetime | None = None,
    ) -> Entitlement:
        """A machine's entitlement on a local date (default: today in its customer's zone)."""
        return (await self.entitlements(conn, [agent.coverage_key], at, now))[agent.id]

    async def entitlements(
        self, conn: AsyncConnection, agents: Sequence[store.CoverageKey], at: dt.date | None = None,
        now: dt.datetime | None = None,
    ) -> dict[str, Entitlement]:
        """Many machines' entitlements in three queries, whatever their number (a rollout
        targets thousands at once)."""
        customer_ids = sorted({a.customer_id for a in agents})
        customers = {c.id: c for c in await store.list_customers(conn)
                     if c.id in customer_ids}
        by_customer: dict[int, list[service.ContractRow]] = {}
        for found in await service.contracts_of(conn, customer_ids):
            by_customer.setdefault(found.customer_id, []).append(found)
        contracts = {c.id: c for rows in by_customer.values() for c in rows}
        missing = {a.contract_id for a in agents if a.contract_id} - set(contracts)
        for contract_id in sorted(missing):  # a contract of another customer: by id
            contracts[contract_id] = await service.get_contract(conn, contract_id)
        packages: dict[int, list[MaintenancePackage]] = {}
        for package in await service.maintenance_of(conn, sorted(contracts)):
            packages.setdefault(package.contract_id, []).append(package)
        now = now or dt.datetime.now(dt.UTC)
        days = {cid: at or customer_calendar(self.policy, customer).local(now).date()
                for cid, customer in customers.items()}
        current = {cid: service.pick_current_contract(by_customer.get(cid, []), on)
                   for cid, on in days.items()}
        # Machines on one contract that joined on the same day have the same coverage: the
        # pure calculation runs once per (contract, joined, day), not per machine.
        computed: dict[tuple[int, dt.date, dt.date], Entitlement] = {}
        result: dict[str, Entitlement] = {}
        for agent in agents:
            on = days[agent.customer_id]
            contract = (contracts[agent.contract_id] if agent.contract_id else
                        current[agent.customer_id])
            if contract is None:
                result[agent.id] = Entitlement(on, "not_covered", NOTHING)
                continue
            joined = agent.joined_contract_on or agent.enrolled_at.date()
            key = (contract.id, joined, on)
            if key not in computed:
                computed[key] = entitlement_at(
                    contract.terms, packages.get(contract.id, []), on, machine_joined_on=joined,
                    tiers=self.policy.tiers, warranty_tier=self.policy.warranty,
                    expiring_within_days=self.policy.expiring_within_days,
                )
            result[agent.id] = computed[key]
        return result

    async def expiring_machines(
        self, conn: AsyncConnection, within_days: int, now: dt.datetime,
        customer_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Machines whose coverage ends within `within_days` with nothing booked after: whom
        to offer a renewal (the expiring report, the weekly list to sales and customers)."""
        rows = []
        agents = await store.list_coverage_keys(conn, customer_id)
        entitlements = await self.entitlements(conn, agents, None, now)
        names = {c.id: c.name for c in await store.list_customers(conn)}
        for agent in agents:
            entitlement = entitlements[agent.id]
            if expiring(entitlement, within_days):
                rows.append({
                    "customer": names[agent.customer_id], "machine": agent.id,
                    "hostname": agent.hostname, "coverage": entitlement.label,
                    "ends_on": entitlement.ends_on, "days_left": entitlement.days_left,
                })
        return sorted(rows, key=lambda r: (r["days_left"], r["customer"]))

    async def expiring_contracts(
        self, conn: AsyncConnection, within_days: int, now: dt.datetime,
    ) -> list[dict[str, Any]]:
        """Whom to call: one row per customer and coverage ending within `within_days` with
        nothing booked after, with how many machines it covers and the customer's contacts.
        Coverage is computed once per group of machines that share it (coverage_groups), so
        the report costs the same for 10 machines or 10,000."""
        groups = await store.coverage_groups(conn)
        entitlements = await self.entitlements(conn, [g.key for g in groups], None, now)
        names = {c.id: c.name for c in await store.list_customers(conn)}
        contacts = await nstore.customer_contacts(conn)
        rows: dict[tuple[int, str, dt.date | None], dict[str, Any]] = {}
        for group in groups:
            entitlement = entitlements[group.a_machine]
            if not expiring(entitlement, within_days):
                continue
            found = rows.setdefault((group.customer_id, entitlement.label, entitlement.ends_on), {
                "customer": names[group.customer_id], "customer_id": group.customer_id,
                "coverage": entitlement.label, "ends_on": entitlement.ends_on,
                "days_left": entitlement.days_left, "machines": 0, "a_machine": group.a_machine,
                "contacts": contacts.get(group.customer_id, []),
            })
            found["machines"] += group.machines
        return sorted(rows.values(), key=lambda r: (r["days_left"], r["customer"], r["coverage"]))

    # ------------------------------------------------------------------ incidents
    async def open_incident(
        self, conn: AsyncConnection, agent: store.Agent, *, kind: str, subject: str,
        category: str, severity: str, opened_by: str, detail: str, now: dt.datetime,
    ) -> int:
        incident_id = await service.add_incident(conn, {
            "agent_id": agent.id, "customer_id": agent.customer_id, "kind": kind,
            "subject": subject, "category": category, "severity": severity, "status": "open",
            "opened_by": opened_by, "opened_at": now, "updated_at": now, "detail": detail,
        })
        decision = await self.decide(conn, incident_id, now)
        await store.record_audit(conn, actor=opened_by, action="incident.open",
                                 target=f"incident:{incident_id}",
                                 detail={"agent": agent.id, "kind": kind}, now=now)
        customer = await store.get_customer(conn, agent.customer_id)
        await notify_incident(conn, incident_id, "incident.opened", now,
                              await load_calendar(conn, self.policy, customer), decision.get("visit"),
                              urgent_from=(await self.policy_for(conn, agent)).urgent_from)
        return incident_id

    async def machine_state(
        self, conn: AsyncConnection, agent: store.Agent, entitlement: Entitlement,
        now: dt.datetime, calendar: BusinessCalendar, policy: Policy,
    ) -> MachineState:
        """What the agent can do remotely. Restoring integrity needs the agent online, the
        installed versions known and the machine entitled to remote fixes (the signed copy).
        How long it has been offline is counted as the policy says (business time)."""
        seen = agent.last_seen
        online = agent.presence.status(now, self.offline_after) == "online"
        health = agent.health or {}
        problems = {x["kind"] for x in health.get("problems", [])}
        versions_known = all(x.get("version") for x in agent.products)
        return MachineState(
            online=online,
            healthy_for_remote=not problems & {"disk_full", "disk_failing"},
            offline_for=None if online or seen is None else silent_for(
                Presence(seen), now, calendar, policy.offline_counts),
            integrity_restorable=online and versions_known and bool(agent.products)
            and entitlement.includes.remote_fixes,
        )

    async def newest_fix(
        self, conn: AsyncConnection, agent: store.Agent, product: str
    ) -> tuple[str, str] | None:
        """(product, version) of the newest release above what the machine runs, if any,
        leaving out versions that already failed to install on it (a rollout's failed
        machine is handed to a technician, not sent the same install again).
        `product` narrows it to one product; empty means any watched product."""
        best: tuple[str, str] | None = None
        for reported in agent.products:
            if product and reported["name"] != product:
                continue
            failed = await ustore.versions_that_failed(conn, agent.id, reported["name"])
            for release in await ustore.find_releases(conn, reported["name"], None):
                if release.version not in failed and _newer(
                        release.version, reported.get("version")) and (
                    best is None or _newer(release.version, best[1])
                ):
                    best = (reported["name"], release.version)
        return best

    async def _job_for(
        self, conn: AsyncConnection, agent: store.Agent, incident: service.Incident,
        action: str, fix: tuple[str, str] | None, now: dt.datetime,
    ) -> dict[str, Any]:
        """Carry out a remote decision with an update job; why not, if it can't be."""
        product = fix[0] if fix else incident.subject or None
        try:
            job = await create_job(
                conn, kind=JOB_ACTIONS[action], agent_ids=[agent.id],
                actor=f"incident:{incident.id}", product=product,
                version=fix[1] if fix and action == "remote_update" else None,
                reason=f"incident {incident.id}: {incident.kind}", now=now)
        except CarelineError as exc:
            return {"job_error": str(exc)}
        return {"job": job["id"]}

    async def decide(self, conn: AsyncConnection, incident_id: int, now: dt.datetime) -> dict[str, Any]:
        """Decide (again) what to do about an incident, and store the decision and any visit."""
        incident = await service.get_incident(conn, incident_id)
        agent = await store.get_agent_exact(conn, incident.agent_id)
        customer = await store.get_customer(conn, agent.customer_id)
        policy = await self.policy_for(conn, agent)
        calendar = await load_calendar(conn, policy, customer)
        reported = incident.opened_at
        entitlement = await self.entitlement(conn, agent, calendar.local(reported).date())
        machine = await self.machine_state(conn, agent, entitlement, now, calendar, policy)
        paused = tuple(Pause(w.started_at, w.ended_at, w.on_whom, w.note)
                       for w in await service.list_waits(conn, incident_id))
        year_ago = now - dt.timedelta(days=365)
        # The release that just failed to install is not a fix for its own failure.
        fix = (None if incident.kind == "update_failed"
               else await self.newest_fix(conn, agent, incident.subject))
        decision = decide(
            IncidentFacts(incident.category, incident.severity, reported), entitlement,
            machine, fix_available=fix is not None, policy=policy, calendar=calendar,
            onsite_visits_used=await service.count_visits(conn, customer.id, year_ago),
            paused=paused,
        )
        facts: dict[str, Any] = {
            "entitlement": entitlement.to_dict(),
            "machine": {**dataclasses.asdict(machine), "offline_for": str(machine.offline_for)
                        if machine.offline_for else None},
            "fix_available": f"{fix[0]} {fix[1]}" if fix else None,
            # values a customer, site or machine override set, and which level
            "policy": {k: v for k, v in sorted(policy.sources.items()) if v in OVERRIDE_LEVELS},
        }
        if decision.action in JOB_ACTIONS:
            facts.update(await self._job_for(conn, agent, incident, decision.action, fix, now))
        decision_id = await service.add_decision(conn, {
            "incident_id": incident_id, "decided_at": now, "action": decision.action,
            "covered": decision.covered, "billable": decision.billable,
            "fee_vnd": decision.fee_vnd, "quote_vnd": decision.quote_vnd,
            "due_at": decision.due_at, "rule": decision.rule, "reasons": list(decision.reasons),
            "explanation": [reason.to_dict() for reason in decision.explanation],
            "facts": facts,
        })
        visit_id = None  # a new work order (notified as visit.created)
        visit = await service.open_visit_of(conn, incident_id)
        if visit is not None and visit.action == decision.action:
            # Decided again (resumed, redecided): the same work order, with the new terms.
            await service.update_visit(conn, visit.id, fee_vnd=decision.fee_vnd,
                                       due_at=decision.due_at)
        elif decision.action in ONSITE_ACTIONS:
            visit_id = await service.add_visit(conn, {
                "incident_id": incident_id, "agent_id": agent.id,
                "customer_id": customer.id, "action": decision.action,
                "fee_vnd": decision.fee_vnd, "due_at": decision.due_at, "status": "open",
                "created_at": now,
            })
        return {"id": decision_id, **decision.to_dict(), "facts": facts, "visit": visit_id}

    async def touch(self, conn: AsyncConnection, incident_id: int) -> None:
        """A technician worked on the incident: it will no longer close by itself."""
        await service.update_incident(conn, incident_id, touched=True)
        for row in await service.touch_conditions_of(conn, incident_id):
            state = touch(_state_from_json(row.state))
            await service.save_condition(conn, row.key, _state_to_json(state), incident_id,
                                         exists=True)

    # ------------------------------------------------------------------ signals
    async def observe(
        self, conn: AsyncConnection, checks: dict[ConditionKey, tuple[bool, str]],
        now: dt.datetime,
    ) -> None:
        """Feed one check per condition (failing?, detail) through flap suppression."""
        agent_ids = sorted({key[0] for key in checks})
        existing = {r.key: r for r in await service.conditions_for(conn, agent_ids)}
        agents_by_id: dict[str, store.Agent] = {}
        policies = await self._alert_policies(conn, agent_ids)
        for key, (failing, detail) in checks.items():
            row = existing.get(key)
            state = _state_from_json(row.state) if row else None
            if state is None and not failing:
                continue
            agent_id, kind, subject = key
            new_state, transition = observe(state, failing, now,
                                            policies.get(agent_id, self.policy).alerts[kind])
            incident_id = row.incident_id if row else None
            if transition is Transition.OPEN and (
                await service.count_open_incidents(conn, agent_id, kind) >= MAX_OPEN_PER_KIND
            ):
                log.warning("agent %s already has %d open %s incidents; not opening one for %r",
                            agent_id, MAX_OPEN_PER_KIND, kind, subject)
            elif transition is Transition.OPEN:
                if agent_id not in agents_by_id:
                    agents_by_id[agent_id] = await store.get_agent_exact(conn, agent_id)
                category, severity = self.policy.kinds[kind]
                incident_id = await self.open_incident(
                    conn, agents_by_id[agent_id], kind=kind, subject=subject, category=category,
                    severity=severity, opened_by="agent", detail=detail, now=now)
            elif transition is Transition.BUMP and incident_id is not None:
                await service.bump_incident(conn, incident_id, detail, now)
            elif transition is Transition.CLOSE and incident_id is not None:
                await service.resolve_incident(conn, incident_id, "condition cleared", now)
            elif transition is Transition.CLEAR and incident_id is not None:
                await service.update_incident(conn, incident_id, updated_at=now,
                                              detail=f"cleared; {detail}".strip("; "))
            await service.save_condition(
                conn, key, _state_to_json(new_state) if new_state else None, incident_id,
                exists=row is not None)

    async def _alert_policies(
        self, conn: AsyncConnection, agent_ids: list[str]
    ) -> dict[str, Policy]:
        """The effective policy of each machine whose alert thresholds are overridden (the
        rest use the vendor's): what flap suppression needs, read once per batch."""
        by_target = await service.overrides_by_target(conn)
        if not any(key.startswith("alerts.") for keys in by_target.values() for key in keys):
            return {}
        return {row.id: self.policy_of(by_target, row.customer_id, row.site_id, row.id)
                for row in await service.agent_owners(conn, agent_ids)}

    async def on_heartbeats(self, conn: AsyncConnection, batch: Mapping[str, p.Health],
                            now: dt.datetime) -> None:
        """Each heartbeat is one check of every heartbeat condition of that agent."""
        checks: dict[ConditionKey, tuple[bool, str]] = {}
        known = {r.key for r in await service.conditions_for(conn, sorted(batch))}
        for agent_id, health in batch.items():
            for problem in health.problems:
                if problem.kind in HEARTBEAT_KINDS:
                    checks[(agent_id, problem.kind, problem.subject)] = (True, problem.detail)
        for key in known:
            if key[1] in HEARTBEAT_KINDS and key[0] in batch:
                checks.setdefault(key, (False, ""))
        if checks:
            await self.observe(conn, checks, now)

    async def on_events(self, conn: AsyncConnection, events: Sequence[tuple[str, p.Event]],
                        now: dt.datetime) -> None:
        """Events that signal trouble, (agent id, event) each: one failing check of their
        condition. An update's result is a check of update_failed: failed, rolled back or
        refused fails it, a later successful install clears it. The checks of a batch go
        through flap suppression together (one look at the conditions), as long as each
        condition is checked once; a second check of one goes in the next round."""
        checks: dict[ConditionKey, tuple[bool, str]] = {}
        for agent_id, event in events:
            check = self._check_of(agent_id, event.kind, event.data)
            if check is None:
                continue
            key, value = check
            if key in checks:
                await self.observe(conn, checks, now)
                checks = {}
            checks[key] = value
        if checks:
            await self.observe(conn, checks, now)

    def _check_of(self, agent_id: str, kind: str, data: dict[str, Any],
                  ) -> tuple[ConditionKey, tuple[bool, str]] | None:
        if kind == "update_result" and data.get("outcome") in UPDATE_OUTCOMES:
            failing = UPDATE_OUTCOMES[data["outcome"]]
            detail = f"{data.get('version')}: {data['outcome']} ({data.get('reason') or ''})"
            return (agent_id, "update_failed", str(data.get("product") or "")), (
                failing, detail if failing else "")
        if kind not in self.policy.kinds:
            return None
        subject = str(data.get("product") or data.get("subject") or "")
        detail = str(data.get("detail") or data.get("reason") or "")
        return (agent_id, kind, subject), (True, detail)

    async def sweep_offline(self, now: dt.datetime) -> None:
        """One agent_offline check per machine: silent longer than the policy allows, in
        its customer's business time? A machine switched off cleanly is never offline."""
        async with self.db.transaction() as conn:
            customers = {c.id: c for c in await store.list_customers(conn)}
            closures = await service.closures_by_customer(conn)
            by_target = await service.overrides_by_target(conn)
            calendars: dict[tuple[int, int], BusinessCalendar] = {}
            checks = {}
            for agent in await store.list_presence(conn):
                if agent.revoked_at is not None:
                    continue
                customer_id = agent.customer_id
                policy = self.policy_of(by_target, customer_id, agent.site_id, agent.id)
                mine = (customer_id, id(policy))  # resolved policies are cached: ids are stable
                if mine not in calendars:
                    calendars[mine] = customer_calendar(
                        policy, customers[customer_id], closures.get(customer_id, ()))
                presence = Presence(agent.last_seen or agent.enrolled_at,
                                    agent.off_at if agent.off else None)
                checks[(agent.id, "agent_offline", "")] = offline_check(
                    presence, now, calendar=calendars[mine],
                    limit=policy.offline_incident_after, counts=policy.offline_counts)
            await self.observe(conn, checks, now)
