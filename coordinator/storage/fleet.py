"""Queries for the fleet: customers, technicians, enrollment tokens, agents, events, audit.

Each function takes an open connection, so callers decide what shares one transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.storage.schema import (
    agents,
    audit,
    customers,
    distinct_machines,
    enrollment_tokens,
    events,
    sites,
    technicians,
)
from careline.shared.errors import AuthError, Conflict, NotFound
from careline.shared.keys import looks_like_agent_id

Row = dict[str, Any]
RowType = TypeVar("RowType")


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer, and its office hours when they differ from the policy's defaults
    (workdays "mon,tue,...", opens/closes "HH:MM")."""

    id: int
    name: str
    timezone: str
    created_at: dt.datetime
    workdays: str | None = None
    opens: str | None = None
    closes: str | None = None


@dataclass(frozen=True, slots=True)
class AgentPresence:
    """What the database says of an agent and its connection, without its health report
    (most of a row's bytes): what its status, a live command to thousands of machines, the
    offline sweep and a rollout's "is it online" need. Any agent row can be read as one."""

    id: str
    hostname: str
    customer_id: int
    site_id: int | None
    enrolled_at: dt.datetime
    revoked_at: dt.datetime | None
    connected: bool
    last_seen: dt.datetime | None
    last_connected_at: dt.datetime | None
    off_at: dt.datetime | None

    @property
    def off(self) -> bool:
        """Stopped cleanly (PC shut down) and not connected since: "off", not "offline".
        (The stop is stored before the disconnect it explains, so `connected` may still be
        set.)"""
        return self.off_at is not None and (
            self.last_connected_at is None or self.off_at >= self.last_connected_at)

    def status(self, now: dt.datetime, offline_after: dt.timedelta) -> str:
        """online while connected and heard from recently; off when its agent stopped
        cleanly (the PC was shut down); any other silent or dropped agent is offline."""
        if self.revoked_at is not None:
            return "revoked"
        seen = self.last_seen
        if self.connected and seen is not None and now - seen <= offline_after:
            return "online"
        return "off" if self.off else "offline"


PRESENCE_COLUMNS = tuple(f.name for f in fields(AgentPresence))


Role = Literal["viewer", "technician", "admin"]  # what a technician may do, least first


@dataclass(frozen=True, slots=True)
class Technician:
    """A technician (their token's hash never leaves storage)."""

    id: int
    name: str
    role: Role
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    language: str | None = None  # the web console's, once chosen


@dataclass(frozen=True, slots=True)
class CoverageKey:
    """What a machine's coverage depends on: its customer, its contract (None: the
    customer's current one) and the day it joined it (else the day it enrolled)."""

    id: str
    customer_id: int
    contract_id: int | None
    joined_contract_on: dt.date | None
    enrolled_at: dt.datetime
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class Agent:
    """An enrolled machine's agent, as stored, with its customer's and its site's names
    (`customer`, `site`) when read for display."""

    id: str
    customer_id: int
    public_key: bytes
    hostname: str
    os: str
    agent_version: str
    enrolled_at: dt.datetime
    revoked_at: dt.datetime | None
    connected: bool
    last_seen: dt.datetime | None
    last_connected_at: dt.datetime | None
    health: dict[str, Any] | None  # its last report, as a JSON object
    contract_id: int | None
    site_id: int | None
    joined_contract_on: dt.date | None
    off_at: dt.datetime | None
    hw_uuid: str | None
    hw_serial: str | None
    hw_disk: str | None
    hw_mac: str | None
    key_id: str | None  # its current key's id, when a reinstall gave the machine a new key
    key_changed_at: dt.datetime | None
    replaced_by: str | None
    versions_at: dt.datetime | None
    targeting_changed_at: dt.datetime | None
    customer: str = ""
    site: str | None = None

    @property
    def coverage_key(self) -> CoverageKey:
        return CoverageKey(self.id, self.customer_id, self.contract_id, self.joined_contract_on,
                           self.enrolled_at, self.hostname)

    @property
    def presence(self) -> AgentPresence:
        return AgentPresence(*(getattr(self, name) for name in PRESENCE_COLUMNS))

    @property
    def products(self) -> list[dict[str, Any]]:
        """The products its last health report listed."""
        return list((self.health or {}).get("products", []))


def rows_of(result: sa.CursorResult[Any]) -> list[Row]:
    return [dict(r) for r in result.mappings()]


def typed_rows(result: sa.CursorResult[Any], row_type: type[RowType]) -> list[RowType]:
    """The rows as `row_type`, a dataclass whose fields are the columns selected."""
    return [row_type(**row) for row in result.mappings()]


async def typed_first(conn: AsyncConnection, query: sa.Select[Any],
                      row_type: type[RowType]) -> RowType | None:
    """The query's first row as `row_type`, or None."""
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else row_type(**row)


async def typed_one(conn: AsyncConnection, query: sa.Select[Any], row_type: type[RowType],
                    missing: str) -> RowType:
    """The query's first row as `row_type`; NotFound(`missing`) when there is none."""
    found = await typed_first(conn, query, row_type)
    if found is None:
        raise NotFound(missing)
    return found


async def insert_row(conn: AsyncConnection, table: sa.Table, values: Mapping[str, Any], what: str) -> int:
    """Insert one row and return its id; a unique-key clash is a Conflict, not a crash."""
    try:
        result = await conn.execute(table.insert().values(**values).returning(table.c.id))
    except IntegrityError:
        raise Conflict(f"{what} already exists") from None
    return int(result.scalar_one())


def insert_ignoring_duplicates(conn: AsyncConnection, table: sa.Table) -> Any:
    """An INSERT that silently skips rows clashing with a unique key, on either backend."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


# ----------------------------------------------------------------------------- customers
async def add_customer(conn: AsyncConnection, name: str, timezone: str,
                       now: dt.datetime) -> Customer:
    cid = await insert_row(
        conn, customers, {"name": name, "timezone": timezone, "created_at": now},
        f"customer {name!r}",
    )
    return Customer(cid, name, timezone, now)


async def list_customers(conn: AsyncConnection) -> list[Customer]:
    return typed_rows(await conn.execute(sa.select(customers).order_by(customers.c.id)), Customer)


async def get_customer(conn: AsyncConnection, ref: str | int) -> Customer:
    """A customer by id or exact name (a name made of digits still matches by name)."""
    text = str(ref)
    condition = customers.c.name == text
    if text.isdigit():
        condition = sa.or_(customers.c.id == int(text), condition)
    query = sa.select(customers).where(condition).order_by(customers.c.id != (
        int(text) if text.isdigit() else -1))
    return await typed_one(conn, query.limit(1), Customer, f"no customer {ref!r}")


async def customer_id_of(conn: AsyncConnection, ref: str | None) -> int | None:
    """The id of the customer a filter names (id or name); None when no filter is given."""
    return (await get_customer(conn, ref)).id if ref else None


async def update_customer(conn: AsyncConnection, customer_id: int, **values: Any) -> None:
    if values:
        await conn.execute(customers.update().where(customers.c.id == customer_id).values(**values))


@dataclass(frozen=True, slots=True)
class Site:
    """One of a customer's offices (policy overrides and enrollment tokens may name it)."""

    id: int
    customer_id: int
    name: str


async def add_site(conn: AsyncConnection, customer_id: int, name: str) -> Site:
    site_id = await insert_row(conn, sites, {"customer_id": customer_id, "name": name},
                               f"site {name!r}")
    return Site(site_id, customer_id, name)


async def list_sites(conn: AsyncConnection, customer_id: int | None = None) -> list[Site]:
    query = sa.select(sites).order_by(sites.c.customer_id, sites.c.name)
    if customer_id is not None:
        query = query.where(sites.c.customer_id == customer_id)
    return typed_rows(await conn.execute(query), Site)


async def get_site(conn: AsyncConnection, customer_id: int, ref: str) -> Site:
    """A customer's site by id or name."""
    condition = sites.c.name == ref
    if ref.isdigit():
        condition = sa.or_(sites.c.id == int(ref), condition)
    return await typed_one(conn, sa.select(sites).where(sites.c.customer_id == customer_id, condition),
                           Site, f"customer {customer_id} has no site {ref!r}")


# ----------------------------------------------------------------------------- technicians
async def add_technician(
    conn: AsyncConnection, name: str, role: Role, token_hash: str, now: dt.datetime
) -> Technician:
    tid = await insert_row(
        conn, technicians,
        {"name": name, "role": role, "token_hash": token_hash, "created_at": now},
        f"technician {name!r}",
    )
    return Technician(tid, name, role, now)


def _technicians() -> sa.Select[Any]:
    return sa.select(*(technicians.c[f.name] for f in fields(Technician)))


async def technician_by_token_hash(conn: AsyncConnection, token_hash: str) -> Technician | None:
    return await typed_first(conn, _technicians().where(technicians.c.token_hash == token_hash),
                             Technician)


async def set_technician_language(conn: AsyncConnection, name: str, language: str) -> None:
    await conn.execute(technicians.update().where(technicians.c.name == name).values(language=language))


async def active_token_hashes(conn: AsyncConnection, hashes: Iterable[str]) -> set[str]:
    """Which of these technician token hashes still belong to an unrevoked technician."""
    wanted = list(hashes)
    if not wanted:
        return set()
    query = sa.select(technicians.c.token_hash).where(
        technicians.c.token_hash.in_(wanted), technicians.c.revoked_at.is_(None))
    return {row.token_hash for row in await conn.execute(query)}


async def list_technicians(conn: AsyncConnection) -> list[Technician]:
    return typed_rows(await conn.execute(_technicians().order_by(technicians.c.id)), Technician)


async def revoke_technician(conn: AsyncConnection, name: str, now: dt.datetime) -> None:
    result = await conn.execute(
        technicians.update()
        .where(technicians.c.name == name, technicians.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if result.rowcount == 0:
        raise NotFound(f"no active technician {name!r}")


# ----------------------------------------------------------------------------- enrollment
async def add_enrollment_token(
    conn: AsyncConnection, *, token_hash: str, customer_id: int, uses_allowed: int,
    expires_at: dt.datetime, created_by: str, now: dt.datetime, contract_id: int | None = None,
    site_id: int | None = None,
) -> int:
    return await insert_row(
        conn, enrollment_tokens,
        {
            "token_hash": token_hash, "customer_id": customer_id, "uses_allowed": uses_allowed,
            "expires_at": expires_at, "created_by": created_by, "created_at": now,
            "contract_id": contract_id, "site_id": site_id,
        },
        "enrollment token",
    )


@dataclass(frozen=True, slots=True)
class EnrollmentGrant:
    """What one use of an enrollment token grants: a machine of this customer, in this
    contract and site if the token names them."""

    id: int  # the token's
    customer_id: int
    contract_id: int | None
    site_id: int | None


async def spend_enrollment_token(conn: AsyncConnection, token_hash: str,
                                 now: dt.datetime) -> EnrollmentGrant:
    """Use the token once, atomically; AuthError says why it can't be."""
    t = enrollment_tokens
    spent = await conn.execute(
        t.update()
        .where(t.c.token_hash == token_hash, t.c.uses < t.c.uses_allowed, t.c.expires_at > now)
        .values(uses=t.c.uses + 1)
        .returning(t.c.id, t.c.customer_id, t.c.contract_id, t.c.site_id)
    )
    row = spent.mappings().first()
    if row is not None:
        return EnrollmentGrant(**row)
    existing = (await conn.execute(sa.select(t).where(t.c.token_hash == token_hash))).mappings().first()
    if existing is None:
        raise AuthError("enrollment token is not known")
    if existing["expires_at"] <= now:
        raise AuthError("enrollment token has expired")
    raise AuthError("enrollment token has been used up")


# ----------------------------------------------------------------------------- agents
async def add_agent(
    conn: AsyncConnection, *, agent_id: str, customer_id: int, public_key: bytes, hostname: str,
    os: str, agent_version: str, now: dt.datetime, contract_id: int | None = None,
    site_id: int | None = None, hardware: Mapping[str, str] | None = None,
) -> None:
    """Register a machine; a token naming a contract makes the machine join it today."""
    try:
        await conn.execute(
            agents.insert().values(
                id=agent_id, customer_id=customer_id, public_key=public_key, hostname=hostname,
                os=os, agent_version=agent_version, enrolled_at=now, contract_id=contract_id,
                joined_contract_on=now.date() if contract_id else None, site_id=site_id,
                key_id=agent_id, **hardware_columns(hardware or {}),
            )
        )
    except IntegrityError:
        raise Conflict("this agent key is already enrolled") from None


HARDWARE_COLUMNS = {"uuid": "hw_uuid", "serial": "hw_serial", "disk": "hw_disk", "mac": "hw_mac"}


def hardware_columns(hardware: Mapping[str, str]) -> dict[str, str | None]:
    """A hashed hardware identity (shared.hardware) as agents' hw_* column values."""
    return {column: hardware.get(field) for field, column in HARDWARE_COLUMNS.items()}


def hardware_of(agent: Agent) -> dict[str, str | None]:
    return {field: getattr(agent, column) for field, column in HARDWARE_COLUMNS.items()}


async def machines_matching(
    conn: AsyncConnection, customer_id: int, hardware: Mapping[str, str]
) -> list[Agent]:
    """A customer's machines sharing any hardware identity field with `hardware`."""
    conditions = [agents.c[column] == hardware[field]
                  for field, column in HARDWARE_COLUMNS.items() if hardware.get(field)]
    if not conditions:
        return []
    return typed_rows(await conn.execute(
        _agents_with_customer().where(agents.c.customer_id == customer_id, sa.or_(*conditions))
        .order_by(agents.c.enrolled_at)), Agent)


async def rekey_agent(
    conn: AsyncConnection, machine_id: str, *, public_key: bytes, key_id: str, hostname: str,
    os: str, agent_version: str, hardware: Mapping[str, str], now: dt.datetime,
) -> None:
    """The machine now authenticates with a new key (it was reinstalled); the old key no
    longer works anywhere. Events the old key sent keep their rows but give up their
    sequence numbers (seq = -id), which the new key's outbox starts again from 1."""
    try:
        await conn.execute(agents.update().where(agents.c.id == machine_id).values(
            public_key=public_key, key_id=key_id, hostname=hostname, os=os,
            agent_version=agent_version, revoked_at=None, connected=False, off_at=None,
            key_changed_at=now, **hardware_columns(hardware)))
    except IntegrityError:
        raise Conflict("this agent key is already enrolled") from None
    await conn.execute(events.update().where(events.c.agent_id == machine_id, events.c.seq > 0)
                       .values(seq=-events.c.id))


async def retire_replaced(
    conn: AsyncConnection, agent_id: str, replaced_by: str, now: dt.datetime
) -> None:
    """A machine that turned out to be a reinstall of `replaced_by`: revoked, its key
    handed over (the placeholder keeps the column unique and can never verify)."""
    await conn.execute(agents.update().where(agents.c.id == agent_id).values(
        public_key=b"replaced:" + agent_id.encode(), key_id=None, revoked_at=now,
        connected=False, replaced_by=replaced_by, key_changed_at=now))


async def store_hardware(
    conn: AsyncConnection, reports: Mapping[str, Mapping[str, str]]
) -> None:
    """The hardware identities agents said hello with (one executemany)."""
    if reports:
        await conn.execute(
            agents.update().where(agents.c.id == sa.bindparam("b_id"))
            .values(**{column: sa.bindparam(f"b_{column}") for column in HARDWARE_COLUMNS.values()}),
            [{"b_id": agent_id, **{f"b_{k}": v for k, v in hardware_columns(hw).items()}}
             for agent_id, hw in reports.items()])


async def mark_distinct(
    conn: AsyncConnection, old_id: str, new_id: str, by: str, now: dt.datetime
) -> None:
    """A technician found these two machines to be different PCs: stop proposing them."""
    await conn.execute(insert_ignoring_duplicates(conn, distinct_machines).values(
        old_id=old_id, new_id=new_id, decided_by=by, decided_at=now))


async def distinct_pairs(conn: AsyncConnection) -> set[tuple[str, str]]:
    query = sa.select(distinct_machines.c.old_id, distinct_machines.c.new_id)
    return {(row.old_id, row.new_id) for row in await conn.execute(query)}


async def count_seats(
    conn: AsyncConnection, contract_id: int, customer_id: int, default_contract: bool
) -> int:
    """Machines (not keys) on a contract: those that joined it, and the customer's
    machines with no contract of their own when it is the customer's current one."""
    joined = agents.c.contract_id == contract_id
    if default_contract:
        joined = sa.or_(joined, sa.and_(agents.c.contract_id.is_(None),
                                        agents.c.customer_id == customer_id))
    query = sa.select(sa.func.count()).select_from(agents).where(
        joined, agents.c.revoked_at.is_(None))
    return int((await conn.execute(query)).scalar_one())


def _agents_with_customer() -> sa.Select[Any]:
    return sa.select(agents, customers.c.name.label("customer"),
                     sites.c.name.label("site")).select_from(
        agents.join(customers, agents.c.customer_id == customers.c.id)
        .outerjoin(sites, agents.c.site_id == sites.c.id))


async def get_agent_exact(conn: AsyncConnection, agent_id: str) -> Agent:
    """An agent (with its customer and site names) by its exact id: all internal code uses
    this, so no hostname or prefix can ever stand for another machine."""
    return await typed_one(conn, _agents_with_customer().where(agents.c.id == agent_id), Agent,
                           f"no agent {agent_id!r}")


async def get_agent(conn: AsyncConnection, ref: str) -> Agent:
    """What a technician typed: an agent's full id first, else an unambiguous prefix of an
    id, or a unique hostname (never when `ref` is shaped like an id)."""
    if not ref:
        raise NotFound("no agent given")
    with contextlib.suppress(NotFound):
        return await get_agent_exact(conn, ref)
    matches = agents.c.id.startswith(ref, autoescape=True)
    if not looks_like_agent_id(ref):
        matches = sa.or_(matches, agents.c.hostname == ref)
    rows = typed_rows(await conn.execute(_agents_with_customer().where(matches).limit(2)), Agent)
    if not rows:
        raise NotFound(f"no agent {ref!r}")
    if len(rows) > 1:
        raise Conflict(f"{ref!r} matches several agents; give more of the id")
    return rows[0]


async def list_agents(conn: AsyncConnection, customer_id: int | None = None) -> list[Agent]:
    query = _agents_with_customer().order_by(agents.c.customer_id, agents.c.hostname, agents.c.id)
    if customer_id is not None:
        query = query.where(agents.c.customer_id == customer_id)
    return typed_rows(await conn.execute(query), Agent)


async def agents_page(conn: AsyncConnection, customer_id: int, limit: int,
                      offset: int) -> tuple[int, list[Agent]]:
    """How many machines a customer has, and one page of them by hostname (a customer with
    2,000 machines shows 50 at a time)."""
    total = (await conn.execute(sa.select(sa.func.count()).select_from(agents)
                                .where(agents.c.customer_id == customer_id))).scalar_one()
    rows = typed_rows(await conn.execute(
        _agents_with_customer().where(agents.c.customer_id == customer_id)
        .order_by(agents.c.hostname, agents.c.id).limit(limit).offset(offset)), Agent)
    return int(total), rows


async def list_coverage_keys(conn: AsyncConnection,
                             customer_id: int | None = None) -> list[CoverageKey]:
    """What the coverage of every machine in service depends on (its customer, contract and
    the day it joined), and its name: the few columns a fleet-wide entitlement pass reads."""
    query = sa.select(*(agents.c[f.name] for f in fields(CoverageKey))).where(
        agents.c.revoked_at.is_(None))
    if customer_id is not None:
        query = query.where(agents.c.customer_id == customer_id)
    return typed_rows(await conn.execute(query), CoverageKey)


@dataclass(frozen=True, slots=True)
class CoverageGroup:
    """Machines in service that share what their coverage depends on, and how many."""

    customer_id: int
    contract_id: int | None
    joined_contract_on: dt.date | None
    enrolled_on: dt.date
    machines: int
    a_machine: str  # one of them (the lowest id), for a link

    @property
    def key(self) -> CoverageKey:
        """As one machine's key (`id` is the group's `a_machine`)."""
        return CoverageKey(self.a_machine, self.customer_id, self.contract_id,
                           self.joined_contract_on,
                           dt.datetime.combine(self.enrolled_on, dt.time(), dt.UTC))


async def coverage_groups(conn: AsyncConnection) -> list[CoverageGroup]:
    """Machines in service counted by what their coverage depends on (customer, contract,
    the day they joined): a fleet-wide report computes coverage once per group, in as many
    rows as there are distinct groups, not one per machine."""
    enrolled_on = sa.type_coerce(sa.func.date(agents.c.enrolled_at), sa.Date)
    query = (
        sa.select(agents.c.customer_id, agents.c.contract_id, agents.c.joined_contract_on,
                  enrolled_on.label("enrolled_on"), sa.func.count().label("machines"),
                  sa.func.min(agents.c.id).label("a_machine"))
        .where(agents.c.revoked_at.is_(None))
        .group_by(agents.c.customer_id, agents.c.contract_id, agents.c.joined_contract_on,
                  enrolled_on)
    )
    return typed_rows(await conn.execute(query), CoverageGroup)


async def list_presence(conn: AsyncConnection,
                        customer_id: int | None = None) -> list[AgentPresence]:
    """Each agent's identity and presence: what a sweep or a command to thousands of
    machines needs."""
    query = sa.select(*(agents.c[name] for name in PRESENCE_COLUMNS)).order_by(
        agents.c.customer_id, agents.c.hostname, agents.c.id)
    if customer_id is not None:
        query = query.where(agents.c.customer_id == customer_id)
    return [AgentPresence(*row) for row in await conn.execute(query)]


async def revoke_agent(conn: AsyncConnection, agent_id: str, now: dt.datetime) -> None:
    result = await conn.execute(
        agents.update()
        .where(agents.c.id == agent_id, agents.c.revoked_at.is_(None))
        .values(revoked_at=now, connected=False)
    )
    if result.rowcount == 0:
        raise Conflict(f"agent {agent_id} is already revoked")


async def agent_by_id(conn: AsyncConnection, agent_id: str) -> Agent | None:
    """Exact lookup by primary key, with no scan (and no customer or site name)."""
    return await typed_first(conn, sa.select(agents).where(agents.c.id == agent_id), Agent)


async def agent_keys(conn: AsyncConnection, enrolled_since: dt.datetime | None = None,
                     ) -> dict[str, tuple[bytes, int, str]]:
    """Public key, customer and machine of every agent not revoked (enrolled since
    `enrolled_since`, if given), by the ids its agent may say hello with (the machine id,
    and its key's id after a reinstall): all authentication needs."""
    query = sa.select(agents.c.id, agents.c.key_id, agents.c.public_key,
                      agents.c.customer_id).where(agents.c.revoked_at.is_(None))
    if enrolled_since is not None:
        query = query.where(agents.c.enrolled_at >= enrolled_since)
    keys = {}
    for row in await conn.execute(query):
        keys[row.id] = keys[row.key_id or row.id] = (
            bytes(row.public_key), row.customer_id, row.id)
    return keys


async def agent_for_hello(conn: AsyncConnection, ref: str) -> Agent | None:
    """The machine an agent saying hello as `ref` is, in one query: the machine whose
    current key has that id (a reinstall linked to an older machine), else the agent whose
    id it is (revoked or not)."""
    rows = typed_rows(await conn.execute(sa.select(agents).where(
        sa.or_(agents.c.key_id == ref, agents.c.id == ref))), Agent)
    current = [r for r in rows if r.key_id == ref and r.revoked_at is None]
    return next(iter(current or [r for r in rows if r.id == ref]), None)


async def rekeyed_since(
    conn: AsyncConnection, since: dt.datetime
) -> list[tuple[str, str | None, dt.datetime]]:
    """(machine, its new key's id, when) for machines that took a new key since."""
    query = sa.select(agents.c.id, agents.c.key_id, agents.c.key_changed_at).where(
        agents.c.key_changed_at >= since, agents.c.replaced_by.is_(None))
    return [(row.id, row.key_id, row.key_changed_at) for row in await conn.execute(query)]


async def revoked_since(conn: AsyncConnection, since: dt.datetime) -> list[str]:
    """Agents revoked since; not those retired as reinstalls of another machine, whose
    agent lives on as that machine (rekeyed_since)."""
    query = sa.select(agents.c.id).where(agents.c.revoked_at >= since,
                                         agents.c.replaced_by.is_(None))
    return [row.id for row in await conn.execute(query)]


async def store_presence(
    conn: AsyncConnection, presence: Mapping[str, tuple[bool, dt.datetime, str]]
) -> None:
    """Connects and disconnects since the last flush, two executemany at most.

    A disconnect carries the time its connection was made, and marks the agent offline
    only if no newer connection has been recorded since: the late "down" of a connection
    the agent left for another coordinator process does not mark it offline there."""
    ups = [{"b_id": a, "b_at": at, "b_version": version}
           for a, (connected, at, version) in presence.items() if connected]
    downs = [{"b_id": a, "b_at": at}
             for a, (connected, at, _v) in presence.items() if not connected]
    if ups:
        await conn.execute(
            agents.update().where(agents.c.id == sa.bindparam("b_id")).values(
                connected=True, last_seen=sa.bindparam("b_at"),
                last_connected_at=sa.bindparam("b_at"),
                agent_version=sa.bindparam("b_version")),
            ups)
    if downs:
        await conn.execute(
            agents.update().where(
                agents.c.id == sa.bindparam("b_id"),
                sa.or_(agents.c.last_connected_at.is_(None),
                       agents.c.last_connected_at <= sa.bindparam("b_at")),
            ).values(connected=False),
            downs)


async def store_clean_stops(conn: AsyncConnection, stops: Mapping[str, dt.datetime]) -> None:
    """Agents that said goodbye before disconnecting: their PC is being switched off."""
    if stops:
        await conn.execute(
            agents.update().where(agents.c.id == sa.bindparam("b_id"))
            .values(off_at=sa.bindparam("b_at")),
            [{"b_id": a, "b_at": at} for a, at in stops.items()])


async def store_heartbeats(conn: AsyncConnection, beats: Iterable[tuple[str, dt.datetime, Any]]) -> None:
    """One executemany for a batch of (agent_id, seen_at, health). A heartbeat is proof
    of a live connection, so it also marks the agent connected: presence follows what
    the agent sends, whatever a lost flush or another process wrote before. A report
    received before the coordinator set the machine's versions from a job result
    (versions_at) is older than what it knows: it leaves the stored health as it is."""
    params = [{"b_id": a, "b_seen": seen, "b_health": health} for a, seen, health in beats]
    if params:
        seen = sa.bindparam("b_seen", type_=agents.c.last_seen.type)
        stale = sa.and_(agents.c.versions_at.is_not(None), agents.c.versions_at > seen)
        health = sa.bindparam("b_health", type_=agents.c.health.type)
        await conn.execute(
            agents.update()
            .where(agents.c.id == sa.bindparam("b_id"))
            .values(last_seen=seen, health=sa.case((stale, agents.c.health), else_=health),
                    connected=True),
            params,
        )


def beyond_newest(table: sa.Table, keep: int) -> sa.Select[Any]:
    """Ids of each agent's rows older than its `keep` newest (ranking only the rows of
    agents over budget: the count per agent is an index scan)."""
    over = sa.select(table.c.agent_id).group_by(table.c.agent_id).having(sa.func.count() > keep)
    ranked = sa.select(table.c.id, sa.func.row_number().over(
        partition_by=table.c.agent_id, order_by=table.c.id.desc()).label("rank")
    ).where(table.c.agent_id.in_(over)).subquery()
    return sa.select(ranked.c.id).where(ranked.c.rank > keep)


async def prune_events(conn: AsyncConnection, keep_per_agent: int, older_than: dt.datetime) -> int:
    """An agent's storage budget: its newest `keep_per_agent` events, none received before
    `older_than`. Returns how many were deleted."""
    old = await conn.execute(events.delete().where(events.c.received_at < older_than))
    beyond = await conn.execute(events.delete().where(
        events.c.id.in_(beyond_newest(events, keep_per_agent))))
    return int(old.rowcount or 0) + int(beyond.rowcount or 0)


async def store_events(
    conn: AsyncConnection,
    batch: Sequence[tuple[str, int, str, dt.datetime, dict[str, Any]]], now: dt.datetime,
) -> set[tuple[str, int]]:
    """Record (agent id, seq, kind, at, data) of any number of agents in one statement;
    returns the (agent id, seq) stored now (the others were stored before: re-sends)."""
    if not batch:
        return set()
    rows = [{"agent_id": agent_id, "seq": seq, "kind": kind, "at": at, "received_at": now,
             "data": data} for agent_id, seq, kind, at, data in batch]
    result = await conn.execute(
        insert_ignoring_duplicates(conn, events).returning(events.c.agent_id, events.c.seq), rows)
    return {(str(agent_id), int(seq)) for agent_id, seq in result}


async def list_events(conn: AsyncConnection, agent_id: str, limit: int = 50) -> list[Row]:
    query = (
        sa.select(events).where(events.c.agent_id == agent_id)
        .order_by(events.c.id.desc()).limit(limit)
    )
    return rows_of(await conn.execute(query))


# ----------------------------------------------------------------------------- audit
async def record_audit(
    conn: AsyncConnection, *, actor: str, action: str, target: str, detail: dict[str, Any],
    now: dt.datetime,
) -> None:
    await conn.execute(
        audit.insert().values(at=now, actor=actor, action=action, target=target, detail=detail)
    )


async def list_audit(conn: AsyncConnection, limit: int = 100) -> list[Row]:
    query = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
    return rows_of(await conn.execute(query))
