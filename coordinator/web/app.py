"""The web console and the REST API as one Litestar application.

Every page and action calls the technicians' API methods in-process (`api.invoke`) as the
signed-in technician: the role check, validation and audit are the CLI's. Pages are rendered
on the server (Jinja2, auto-escaped); the only script refreshes the live counters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import secrets
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from careline.coordinator import api, i18n
from careline.coordinator.storage import sessions as stored
from careline.coordinator.web.jinja import environment
from careline.coordinator.web.sessions import COOKIE, IDLE, LIFETIME, Session, id_hash, page_of, safe_next
from careline.shared.errors import AuthError, CarelineError, ConfigError, NotFound, PermissionDenied
from careline.shared.keys import token_hash

if TYPE_CHECKING:
    from careline.coordinator.services import Services
    from careline.coordinator.storage import fleet as store

log = logging.getLogger("careline.coordinator")

PAGE_SIZE = 50
PRE_COOKIE = "careline_signin"  # double-submit CSRF token of the sign-in form
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
STATUS = {AuthError: 401, PermissionDenied: 403, NotFound: 404, ConfigError: 400}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# The care report is one self-contained page: its own inline style and inlined logo, nothing else.
REPORT_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy":
                  "default-src 'none'; style-src 'unsafe-inline'; img-src data:"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def status_of(exc: CarelineError) -> int:
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return 409 if exc.code == "conflict" else 400


class SignInRequired(Exception):
    """No live session, or its technician was revoked: back to the sign-in page."""


def form_params(form: dict[str, str]) -> dict[str, Any]:
    """A form's fields as method parameters: empty fields are left out (the method's default)."""
    return {k: v for k, v in form.items() if k not in ("csrf", "next") and v.strip() != ""}


def summary(name: str, result: Any) -> str:
    """One line telling the technician what an action did."""
    if isinstance(result, list):  # streamed answers (ping): machine and status each
        return "; ".join(f"{r.get('machine', '')[:12]}: {r.get('status', '')}" for r in result) or "-"
    if isinstance(result, dict):
        for key in ("status", "id", "job", "name"):
            if key in result:
                return f"{key} {result[key]}"
    return "ok"


class Console:
    """The application's state: the coordinator's services, sessions and templates."""

    def __init__(self, services: Services) -> None:
        self.services = services
        overrides = services.datadir.path / "templates"
        self.env = environment("web", overrides if overrides.is_dir() else None)

    # ------------------------------------------------------------------ who is asking
    async def technician(self, hashed: str) -> store.Technician | None:
        """The technician holding this token now: None once revoked (re-read on every request)."""
        from careline.coordinator.storage import fleet as store

        async with self.services.db.connect() as conn:
            row = await store.technician_by_token_hash(conn, hashed)
        return None if row is None or row.revoked_at is not None else row

    async def caller_for(self, hashed: str) -> api.Caller | None:
        row = await self.technician(hashed)
        return None if row is None else api.Caller(row.name, row.role)

    async def signed_in(self, request: Request[Any, Any, Any]) -> tuple[Session, api.Caller]:
        """The request's session and technician, read afresh; SignInRequired when the session
        is unknown, expired, or its technician was revoked (then all their sessions end)."""
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            raise SignInRequired
        now = utcnow()
        async with self.services.db.connect() as conn:
            row = await stored.get_with_technician(conn, id_hash(cookie))
        if row is None:
            raise SignInRequired
        session = Session.from_row(row)
        if row["name"] is None or row["revoked_at"] is not None or not session.live(now):
            async with self.services.db.transaction() as conn:
                if row["name"] is None or row["revoked_at"] is not None:
                    await stored.delete_for_token(conn, session.token_hash)
                else:
                    await stored.delete(conn, session.id_hash)
            raise SignInRequired
        if session.needs_touch(now):
            async with self.services.db.transaction() as conn:
                await stored.update(conn, session.id_hash, last_seen=now)
        return session, api.Caller(row["name"], row["role"])

    async def save(self, session: Session, **values: Any) -> None:
        async with self.services.db.transaction() as conn:
            await stored.update(conn, session.id_hash, **values)

    async def flash(self, session: Session, kind: str, text: str) -> None:
        """A message for the next page this session shows (whichever process serves it)."""
        session.flash.append([kind, text])
        await self.save(session, flash=session.flash)

    async def pop_flash(self, session: Session) -> list[list[str]]:
        shown, session.flash = session.flash, []
        if shown:
            await self.save(session, flash=[])
        return shown

    async def bearer(self, request: Request[Any, Any, Any]) -> api.Caller:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise AuthError("technician token required (Authorization: Bearer TOKEN)")
        caller = await self.caller_for(token_hash(header.removeprefix("Bearer ").strip()))
        if caller is None:
            await self.services.technicians.login_failed(_address(request))
            raise AuthError("technician token unknown or revoked")
        return caller

    async def invoke(self, caller: api.Caller, method: str, params: dict[str, Any]) -> Any:
        try:
            return await api.invoke(self.services, caller, method, params, utcnow())
        except PermissionDenied as exc:  # audited as a refused /admin request is
            await self.services.technicians.refused(caller.name, method, str(exc))
            raise

    async def call(self, caller: api.Caller, method: str, /, **params: Any) -> Any:
        """For pages: parameters left as None take the method's default."""
        return await self.invoke(caller, method, {k: v for k, v in params.items() if v is not None})

    # ------------------------------------------------------------------ rendering
    def html(self, template: str, lang: str, status: int = 200, **context: Any) -> Response[str]:
        body = i18n.render(self.env, template, lang, "web", **context)
        return Response(body, media_type=MediaType.HTML, status_code=status, headers=SECURITY_HEADERS)

    async def page(self, request: Request[Any, Any, Any], session: Session, caller: api.Caller,
                   template: str, **context: Any) -> Response[str]:
        tz, lang = session.timezone, session.lang

        def when(value: Any) -> str:
            return "" if value is None else i18n.format_time(_instant(value), tz, lang)

        def day(value: Any) -> str:
            if value is None:
                return ""
            if isinstance(value, str):
                value = dt.date.fromisoformat(value[:10])
            if isinstance(value, dt.datetime):
                return i18n.format_day(value, tz, lang)
            return i18n.format_day(dt.datetime.combine(value, dt.time(12), dt.UTC), "UTC", lang)

        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.html(template, lang, me=caller, csrf=session.csrf, tz=tz, here=here,
                         flash=await self.pop_flash(session), when=when, day=day,
                         can_act=caller.role != "viewer", **context)


def _address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "?"


def _instant(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _int(value: str | None, default: int = 1) -> int:
    try:
        return int(value or default)
    except ValueError:
        return default


def create_app(services: Services) -> Litestar:
    """The console and the REST API for one coordinator process."""
    console = Console(services)
    # ------------------------------------------------------------------ sign-in and out
    @get("/signin")
    async def signin_form(request: Request[Any, Any, Any]) -> Response[str]:
        lang = i18n.negotiate(request.headers.get("accept-language"))
        pre = secrets.token_urlsafe(24)
        response = console.html("signin.html", lang, pre=pre, error=None)
        response.set_cookie(Cookie(key=PRE_COOKIE, value=pre, httponly=True, secure=True,
                                   samesite="strict", path="/signin", max_age=3600))
        return response

    @post("/signin", status_code=303)
    async def signin(request: Request[Any, Any, Any]) -> Response[Any]:
        form = dict(await request.form())
        lang = i18n.negotiate(request.headers.get("accept-language"))
        pre = request.cookies.get(PRE_COOKIE, "")
        if not pre or not secrets.compare_digest(pre, form.get("pre", "")):
            return console.html("signin.html", lang, 403, pre=pre, error="csrf")
        hashed = token_hash(form.get("token", "").strip())
        row = await console.technician(hashed)
        if row is None:
            await services.technicians.login_failed(_address(request))
            return console.html("signin.html", lang, 401, pre=pre, error="token")
        lang = row.language or lang  # chosen once in the console, else the browser's
        timezone = form.get("timezone") or DEFAULT_TIMEZONE
        try:
            i18n.format_time(utcnow(), timezone, lang)
        except Exception:
            timezone = DEFAULT_TIMEZONE
        now = utcnow()
        cookie, session = Session.new(hashed, lang, timezone, now)
        async with services.db.transaction() as conn:
            await stored.prune(conn, now - IDLE, now - LIFETIME)
            await stored.add(conn, session.row())
        response = Redirect("/fleet", status_code=303)
        response.set_cookie(Cookie(key=COOKIE, value=cookie, httponly=True, secure=True,
                                   samesite="strict", path="/"))
        response.delete_cookie(PRE_COOKIE, path="/signin")
        return response

    async def checked_form(request: Request[Any, Any, Any]) -> tuple[Session, api.Caller, dict[str, str]]:
        session, caller = await console.signed_in(request)
        form = {k: str(v) for k, v in dict(await request.form()).items()}
        if not session.check_csrf(form.get("csrf")):
            raise PermissionDenied("the form's security token is missing or wrong: reload the page")
        return session, caller, form

    @post("/signout", status_code=303)
    async def signout(request: Request[Any, Any, Any]) -> Response[Any]:
        session, _, _ = await checked_form(request)
        async with services.db.transaction() as conn:
            await stored.delete(conn, session.id_hash)
        response = Redirect("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @post("/preferences", status_code=303)
    async def preferences(request: Request[Any, Any, Any]) -> Response[Any]:
        session, caller, form = await checked_form(request)
        if form.get("lang") in i18n.LANGUAGES:
            await console.call(caller, "profile.language", language=form["lang"])
            await console.save(session, lang=form["lang"])
        return Redirect(safe_next(form.get("next"), "/fleet"), status_code=303)

    @post("/act/{name:str}", status_code=303)
    async def act(request: Request[Any, Any, Any], name: str) -> Response[Any]:
        """Every button: one API method, called as the signed-in technician."""
        session, caller, form = await checked_form(request)
        back = safe_next(form.get("next"), "/fleet")
        try:
            result = await console.call(caller, name, **form_params(form))
        except PermissionDenied:
            raise
        except CarelineError as exc:
            await console.flash(session, "error", f"{name}: {exc}")
        else:
            await console.flash(session, "ok", f"{name}: {summary(name, result)}")
        return Redirect(back, status_code=303)

    # ------------------------------------------------------------------ pages
    @get("/")
    async def home() -> Redirect:
        return Redirect("/fleet", status_code=303)

    @get("/fleet")
    async def fleet(request: Request[Any, Any, Any]) -> Response[Any]:
        session, caller = await console.signed_in(request)
        overview = await console.call(caller, "fleet.overview")
        return await console.page(request, session, caller, "fleet.html", overview=overview)

    @get("/live/fleet")
    async def live_fleet(request: Request[Any, Any, Any]) -> dict[str, Any]:
        _, caller = await console.signed_in(request)
        overview = await console.call(caller, "fleet.overview")
        counts = {f"c{c['id']}-{k}": c[k] for c in overview["customers"]
                  for k in ("machines", "online", "off", "offline", "needs_attention")}
        counts.update({f"total-{k}": v for k, v in overview["totals"].items()})
        return counts

    @get("/customers/{customer_id:int}")
    async def customer(request: Request[Any, Any, Any], customer_id: int) -> Response[Any]:
        session, caller = await console.signed_in(request)
        ref = str(customer_id)
        customers = await console.call(caller, "customers.list")
        found = next((c for c in customers if c["id"] == customer_id), None)
        if found is None:
            raise NotFound(f"no customer {customer_id}")
        wanted = max(1, _int(request.query_params.get("page")))
        machines = await console.call(caller, "customers.machines", customer=ref, limit=PAGE_SIZE,
                                      offset=(wanted - 1) * PAGE_SIZE)
        page_no, offset, last = page_of(machines["total"], wanted, PAGE_SIZE)
        if page_no != wanted:  # past the end: show the last page
            machines = await console.call(caller, "customers.machines", customer=ref,
                                          limit=PAGE_SIZE, offset=offset)
        incidents = await console.call(caller, "incidents.page", customer=ref, limit=20)
        visits = await console.call(caller, "visits.list", completed=True, customer=ref)
        rollouts = await console.call(caller, "rollouts.customer", customer=ref)
        contracts = await console.call(caller, "contracts.list", customer=ref)
        month = utcnow().strftime("%Y-%m")
        return await console.page(request, session, caller, "customer.html", customer=found,
                            machines=machines, page_no=page_no, last=last,
                            incidents=incidents, visits=visits,
                            rollouts=rollouts, contracts=contracts, month=month)

    @get("/customers/{customer_id:int}/care-report")
    async def care_report(request: Request[Any, Any, Any], customer_id: int) -> Response[Any]:
        from careline.coordinator import care_report as report

        _, caller = await console.signed_in(request)
        month = request.query_params.get("month") or utcnow().strftime("%Y-%m")
        lang = request.query_params.get("lang") or "vi"
        data = await console.call(caller, "report.care", customer=str(customer_id), month=month)
        overrides = services.datadir.path / "templates"
        overrides_dir = overrides if overrides.is_dir() else None
        name = f"care-report-{customer_id}-{month}"
        if request.query_params.get("format") == "html":
            return Response(report.render_html(data, i18n.language(lang), overrides_dir),
                            media_type=MediaType.HTML, headers=REPORT_HEADERS)
        # Printing takes a second or so: off the event loop the agents' connections share.
        pdf = await asyncio.to_thread(report.render_pdf, data, i18n.language(lang), overrides_dir)
        return Response(pdf, media_type="application/pdf", headers={
            **SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}.pdf"'})

    @get("/machines/{machine:str}")
    async def machine(request: Request[Any, Any, Any], machine: str) -> Response[Any]:
        session, caller = await console.signed_in(request)
        agent = await console.call(caller, "agents.show", id=machine)
        coverage = await console.call(caller, "entitlement.show", machine=agent["id"])
        incidents = await console.call(caller, "incidents.page", machine=agent["id"], limit=20)
        diagnostics = await console.call(caller, "diagnostics.list", machine=agent["id"])
        jobs = await console.call(caller, "jobs.machine", machine=agent["id"])
        releases = await console.call(caller, "releases.list")
        history = await console.call(caller, "agents.health_history", id=agent["id"], hours=24)
        return await console.page(request, session, caller, "machine.html", agent=agent,
                            coverage=coverage, incidents=incidents, diagnostics=diagnostics,
                            releases=releases, jobs=jobs, history=history["samples"])

    @get("/incidents")
    async def incidents(request: Request[Any, Any, Any]) -> Response[Any]:
        session, caller = await console.signed_in(request)
        q = request.query_params
        open_only = q.get("open", "1") == "1"
        customer_ref = q.get("customer") or None
        wanted = max(1, _int(q.get("page")))
        rows = await console.call(caller, "incidents.page", open=open_only, customer=customer_ref,
                                  limit=PAGE_SIZE, offset=(wanted - 1) * PAGE_SIZE)
        page_no, offset, last = page_of(rows["total"], wanted, PAGE_SIZE)
        if page_no != wanted:  # past the end: show the last page
            rows = await console.call(caller, "incidents.page", open=open_only,
                                      customer=customer_ref, limit=PAGE_SIZE, offset=offset)
        return await console.page(request, session, caller, "incidents.html", result=rows,
                            page_no=page_no, last=last, open_only=open_only,
                            customer=customer_ref or "")

    @get("/incidents/{incident_id:int}")
    async def incident(request: Request[Any, Any, Any], incident_id: int) -> Response[Any]:
        session, caller = await console.signed_in(request)
        found = await console.call(caller, "incidents.show", id=incident_id)
        explain = None
        if found["decision"] is not None:
            explain = await console.call(caller, "incidents.explain", id=incident_id)
        visits = [v for v in await console.call(caller, "visits.list", completed=True)
                  if v["incident_id"] == incident_id]
        technicians = [t for t in await console.call(caller, "technicians.list")
                       if t["revoked_at"] is None and t["role"] != "viewer"]
        return await console.page(request, session, caller, "incident.html", incident=found,
                            explain=explain, visits=visits, technicians=technicians)

    @get("/visits")
    async def visits(request: Request[Any, Any, Any]) -> Response[Any]:
        session, caller = await console.signed_in(request)
        q = request.query_params
        show = q.get("show", "open")
        technician = q.get("technician") or ""
        rows = await console.call(caller, "visits.list", completed=show == "all")
        now = utcnow()
        if show == "today":
            rows = await console.call(caller, "visits.list", due="today")
        elif show == "overdue":
            rows = [v for v in rows if v["due_at"] < now]
        if technician:
            rows = [v for v in rows if v["technician"] == technician]
        page_no, offset, last = page_of(len(rows), _int(q.get("page")), PAGE_SIZE)
        technicians = [t for t in await console.call(caller, "technicians.list")
                       if t["revoked_at"] is None and t["role"] != "viewer"]
        return await console.page(request, session, caller, "visits.html",
                                  rows=rows[offset:offset + PAGE_SIZE], page_no=page_no, last=last,
                                  show=show, technician=technician, technicians=technicians, now=now)

    @get("/rollouts")
    async def rollouts(request: Request[Any, Any, Any]) -> Response[Any]:
        session, caller = await console.signed_in(request)
        rows = await console.call(caller, "rollouts.list")
        return await console.page(request, session, caller, "rollouts.html", rows=rows)

    @get("/rollouts/{rollout_id:int}")
    async def rollout(request: Request[Any, Any, Any], rollout_id: int) -> Response[Any]:
        session, caller = await console.signed_in(request)
        found = await console.call(caller, "rollouts.show", id=rollout_id)
        q = request.query_params
        page_no, offset, last = page_of(len(found["machines"]), _int(q.get("page")), PAGE_SIZE)
        return await console.page(request, session, caller, "rollout.html", rollout=found,
                            machines=found["machines"][offset:offset + PAGE_SIZE],
                            page_no=page_no, last=last)

    @get("/contracts/expiring")
    async def expiring(request: Request[Any, Any, Any]) -> Response[Any]:
        session, caller = await console.signed_in(request)
        within = max(1, min(_int(request.query_params.get("within"), 60), 366))
        rows = await console.call(caller, "report.expiring_contracts", within_days=within)
        page_no, offset, last = page_of(len(rows), _int(request.query_params.get("page")), PAGE_SIZE)
        return await console.page(request, session, caller, "expiring.html", total=len(rows),
                                  machines=sum(r["machines"] for r in rows),
                                  rows=rows[offset:offset + PAGE_SIZE], within=within,
                                  page_no=page_no, last=last)

    @get("/audit")
    async def audit(request: Request[Any, Any, Any]) -> Response[Any]:
        session, caller = await console.signed_in(request)
        q = request.query_params
        page_no = max(1, _int(q.get("page")))
        actor = q.get("actor") or ""
        rows = await console.call(caller, "audit.list", limit=page_no * PAGE_SIZE + 1)
        if actor:
            rows = [r for r in rows if r["actor"] == actor]
        shown = rows[(page_no - 1) * PAGE_SIZE:page_no * PAGE_SIZE]
        more = len(rows) > page_no * PAGE_SIZE
        return await console.page(request, session, caller, "audit.html", rows=shown, page_no=page_no,
                            more=more, actor=actor)

    # ------------------------------------------------------------------ errors
    def on_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if isinstance(exc, SignInRequired):
            if request.url.path.startswith("/live/") or request.method != "GET":
                return Response({"error": "sign in again"}, status_code=401)
            return Redirect("/signin", status_code=303)
        assert isinstance(exc, CarelineError)
        status = status_of(exc)
        if request.url.path.startswith("/api/"):
            return Response({"error_code": exc.code, "error": str(exc)}, status_code=status)
        lang = i18n.negotiate(request.headers.get("accept-language"))
        return console.html("error.html", lang, status, code=status, message=str(exc))

    def on_crash(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if isinstance(exc, HTTPException):  # the framework's own answers (400 validation, 404 ...)
            return Response({"status_code": exc.status_code, "detail": exc.detail,
                             "extra": exc.extra}, status_code=exc.status_code)
        log.exception("web %s %s failed", request.method, request.url.path)
        return Response({"error_code": "internal", "error": "internal error (see the coordinator log)"},
                        status_code=500)

    static = create_static_files_router(
        path="/static", directories=[str(resources.files("careline.coordinator.web") / "static")],
        include_in_schema=False)
    pages = Router(path="/", include_in_schema=False, route_handlers=[
        signin_form, signin, signout, preferences, act, home, fleet, live_fleet, customer,
        care_report, machine, incidents, incident, visits, rollouts, rollout, expiring, audit,
    ])
    return Litestar(
        route_handlers=[pages, static, api_router(console)],
        exception_handlers={SignInRequired: on_error, CarelineError: on_error, Exception: on_crash},
        openapi_config=OpenAPIConfig(
            title="Careline API", version="1", path="/api/v1/schema", render_plugins=[JsonRenderPlugin()],
            description="Every technician method, called with a technician token "
                        "(Authorization: Bearer TOKEN) and a JSON object of its parameters."),
        debug=False,
    )


def api_router(console: Console) -> Router:
    """POST /api/v1/<group>/<method> for every technician method, its parameters as the body;
    and GET with the parameters in the query string for those that only read."""
    from careline.shared import protocol as p

    def route(found: api.Method) -> Any:
        async def call(request: Request[Any, Any, Any], data: Any) -> Any:
            caller = await console.bearer(request)
            return p.to_builtins(await console.invoke(caller, found.name, p.to_builtins(data)))

        call.__annotations__ = {"request": Request, "data": found.params, "return": Any}
        return post("/" + found.name.replace(".", "/"), name=f"api-{found.name}", status_code=200,
                    summary=found.name, description=f"Needs the {found.role} role.",
                    tags=[found.name.split(".")[0]], operation_id=found.name.replace(".", "_"))(call)

    def read_route(found: api.Method) -> Any:
        async def call(request: Request[Any, Any, Any], **query: Any) -> Any:
            caller = await console.bearer(request)
            return p.to_builtins(await console.invoke(caller, found.name, p.to_builtins(query)))

        # The method's parameters as the handler's: the framework validates the query string
        # and the OpenAPI document lists each one.
        fields = msgspec.structs.fields(found.params)
        call.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
            inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
            *(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                                default=_default_of(f)) for f in fields)])
        call.__annotations__ = {"request": Request, **{f.name: f.type for f in fields}, "return": Any}
        return get("/" + found.name.replace(".", "/"), name=f"api-get-{found.name}",
                   summary=found.name, description="Needs the viewer role; changes nothing.",
                   tags=[found.name.split(".")[0]], operation_id=found.name.replace(".", "_") + "_get")(call)

    methods = sorted(api.METHODS.values(), key=lambda m: m.name)
    handlers = [route(found) for found in methods] + [read_route(f) for f in methods if f.reads_only]
    return Router(path="/api/v1", route_handlers=handlers)


def _default_of(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return inspect.Parameter.empty
