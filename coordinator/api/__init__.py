"""The technicians' API: named methods with typed parameters and a minimum role.

Each module here registers its methods with `@method`; the server's /admin channel looks
them up, checks the caller's role, validates parameters and audits every change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from careline.coordinator.storage.fleet import Role
from careline.shared.errors import PermissionDenied, ProtocolError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from careline.coordinator.services import Services

ROLES: tuple[Role, ...] = ("viewer", "technician", "admin")


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role

    def require(self, role: Role) -> None:
        if ROLES.index(self.role) < ROLES.index(role):
            raise PermissionDenied(f"{self.name} is a {self.role}; this needs the {role} role")


@dataclass
class Context:
    services: Services
    caller: Caller
    now: dt.datetime

    async def audit(
        self, conn: AsyncConnection, action: str, target: str, **detail: Any
    ) -> None:
        from careline.coordinator.storage.fleet import record_audit

        await record_audit(
            conn, actor=self.caller.name, action=action, target=target,
            detail=msgspec.to_builtins(detail), now=self.now,
        )


Handler = Callable[[Context, Any], Awaitable[Any] | AsyncIterator[Any]]
# The decorator hands back the handler with its own signature, so direct calls stay typed.
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class Method:
    name: str
    role: Role
    params: type[msgspec.Struct]
    handler: Handler
    streams: bool  # an async generator: each yield is sent as a partial reply
    writes: bool = False  # changes something although a viewer may call it (their own settings)

    @property
    def reads_only(self) -> bool:
        """Safe to answer an HTTP GET: a viewer's method that changes nothing and answers once."""
        return self.role == "viewer" and not self.streams and not self.writes


METHODS: dict[str, Method] = {}


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


def method(
    name: str, role: Role, params: type[msgspec.Struct] = NoParams, *, streams: bool = False,
    writes: bool = False,
) -> Callable[[H], H]:
    def register(handler: H) -> H:
        if name in METHODS:
            raise RuntimeError(f"admin method {name} registered twice")
        METHODS[name] = Method(name, role, params, handler, streams, writes)
        return handler

    return register


def lookup(name: str, caller: Caller) -> Method:
    found = METHODS.get(name)
    if found is None:
        raise ProtocolError(f"unknown method {name!r}")
    caller.require(found.role)
    return found


def parse_params(found: Method, params: dict[str, Any]) -> Any:
    try:
        return msgspec.convert(params, type=found.params, strict=False)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"{found.name}: {exc}") from None


# What an in-process answer keeps as it is (the wire turns them into text).
IN_PROCESS_TYPES = (dt.datetime, dt.date, dt.time, dt.timedelta, bytes)


async def invoke(services: Services, caller: Caller, name: str, params: dict[str, Any],
                 now: dt.datetime) -> Any:
    """Call a method in-process as `caller` (the web console and REST API): the same role
    check, validation and audit as a request on /admin, and the same plain data as its
    answer there (typed rows become dicts), but with dates and times kept as such. A
    streaming method's partial results come back as one list."""
    found = lookup(name, caller)
    parsed = parse_params(found, params)
    ctx = Context(services, caller, now)
    if found.streams:
        stream: AsyncIterator[Any] = found.handler(ctx, parsed)  # type: ignore[assignment]
        result = [partial async for partial in stream]
    else:
        result = await found.handler(ctx, parsed)  # type: ignore[misc]
    return msgspec.to_builtins(result, builtin_types=IN_PROCESS_TYPES)


def load_all() -> None:
    """Import every API module so its methods register."""
    from careline.coordinator.api import (  # noqa: F401
        fleet,
        live,
        notify,
        overview,
        policy,
        releases,
        report,
        rollouts,
        service,
    )
