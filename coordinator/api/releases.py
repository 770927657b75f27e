"""Release and update-job methods (issue 6).

The release manager's CLI signs on its own machine and calls these with the results:
`releases.online_keys` / `releases.publish_metadata` (keys init and rotation),
`releases.upload` + `releases.publish` (a package and the targets metadata listing it).
Technicians create jobs with `push.*` and follow them with `jobs.*`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from careline.coordinator.api import Context, method
from careline.coordinator.storage import fleet as fleet_store
from careline.coordinator.storage import updates as store
from careline.coordinator.updates import UpdateService, create_job, file_sha256
from careline.shared.errors import ConfigError, Conflict, NotFound, VerificationError

MAX_PACKAGE_BYTES = 4 << 30
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
BUNDLE_CHUNK = 2 << 20


def _updates(ctx: Context) -> UpdateService:
    return ctx.services.updates


# ----------------------------------------------------------------------------- keys & metadata
@method("releases.online_keys", "admin")
async def online_keys(ctx: Context, _: Any) -> dict[str, Any]:
    return {"keys": _updates(ctx).repo.online_public_keys().decode()}


class NewOnlineKey(msgspec.Struct, forbid_unknown_fields=True):
    role: str


@method("releases.new_online_key", "admin", NewOnlineKey)
async def new_online_key(ctx: Context, p: NewOnlineKey) -> dict[str, Any]:
    async with _updates(ctx).repo_lock:
        key = _updates(ctx).repo.new_online_key(p.role)
    async with ctx.services.db.transaction() as conn:
        await ctx.audit(conn, "release.new_online_key", f"role:{p.role}")
    return {"key": key.decode()}


@method("releases.current_targets", "admin")
async def current_targets(ctx: Context, _: Any) -> dict[str, Any]:
    return {"targets": _updates(ctx).repo.current_targets().decode()}


class PublishMetadata(msgspec.Struct, forbid_unknown_fields=True):
    root: str | None = None
    targets: str | None = None


@method("releases.publish_metadata", "admin", PublishMetadata)
async def publish_metadata(ctx: Context, p: PublishMetadata) -> dict[str, Any]:
    """Root (new or rotated) and/or targets signed by the release manager."""
    updates = _updates(ctx)
    async with updates.repo_lock:
        await asyncio.to_thread(
            updates.repo.publish,
            root=p.root.encode() if p.root else None,
            targets=p.targets.encode() if p.targets else None,
        )
    async with ctx.services.db.transaction() as conn:
        await ctx.audit(conn, "release.metadata", "tuf", root=p.root is not None,
                        targets=p.targets is not None)
    return {"published": True}


# ----------------------------------------------------------------------------- packages
class Upload(msgspec.Struct, forbid_unknown_fields=True):
    data: bytes
    offset: int = 0
    upload: str | None = None


def _upload_path(ctx: Context, upload: str) -> Any:
    if not _UPLOAD_ID.match(upload):
        raise ConfigError("bad upload id")
    return _updates(ctx).uploads / f"{upload}.part"


@method("releases.upload", "admin", Upload)
async def upload(ctx: Context, p: Upload) -> dict[str, Any]:
    """Append one piece of a package to an upload (a new one when `upload` is absent)."""
    updates = _updates(ctx)
    updates.uploads.mkdir(parents=True, exist_ok=True)
    upload_id = p.upload or secrets.token_hex(16)
    path = _upload_path(ctx, upload_id)
    size = path.stat().st_size if path.exists() else 0
    if p.upload and not path.exists():
        raise NotFound(f"no upload {p.upload}")
    if p.offset != size:
        raise Conflict(f"upload is at byte {size}, not {p.offset}")
    if size + len(p.data) > MAX_PACKAGE_BYTES:
        raise ConfigError("package too large")
    # On the loop on purpose: no await between the offset check and the append, so two
    # pieces sent at once cannot both land at the same offset.
    with open(path, "ab") as f:  # noqa: ASYNC230
        f.write(p.data)
    return {"upload": upload_id, "offset": size + len(p.data)}


AUTO_ROLLOUT_ACTOR = "careline (regulation release)"


class Publish(msgspec.Struct, forbid_unknown_fields=True):
    upload: str
    targets: str


@method("releases.publish", "admin", Publish)
async def publish(ctx: Context, p: Publish) -> dict[str, Any]:
    """Accept an uploaded package with the vendor-signed targets metadata that lists it."""
    from tuf.api.metadata import Metadata

    from careline.shared.package import read_package_info
    from careline.shared.trust import target_path

    updates = _updates(ctx)
    path = _upload_path(ctx, p.upload)
    if not path.exists():
        raise NotFound(f"no upload {p.upload}")
    try:
        info = await asyncio.to_thread(read_package_info, path)
        sha256 = await asyncio.to_thread(file_sha256, path)
        length = path.stat().st_size
        name = target_path(info.product, info.version)
        try:
            targets = Metadata.from_bytes(p.targets.encode())
            target = targets.signed.targets[name]  # type: ignore[attr-defined]
        except KeyError:
            raise VerificationError(f"the targets metadata does not list {name}") from None
        except Exception as exc:
            raise VerificationError(f"targets metadata is invalid: {exc}") from None
        if target.length != length or target.hashes.get("sha256") != sha256:
            raise VerificationError(f"{name}: the signed length/sha256 is not the uploaded file's")
        async with ctx.services.db.connect() as conn:
            if await store.find_releases(conn, info.product, info.version):
                raise Conflict(f"{info.product} {info.version} is already published")
        row = {
            "product": info.product, "version": info.version, "kind": info.kind,
            "regulation_ref": info.regulation_ref, "effective": info.effective,
            "notes": info.notes, "target": name, "sha256": sha256, "length": length,
            "published_by": ctx.caller.name, "published_at": ctx.now,
        }
        # All or nothing: the package is stored first (content-addressed, harmless alone),
        # then the TUF metadata and the database row; if the row cannot be written, the
        # metadata goes back to what clients saw before, so no agent is offered a release
        # the coordinator does not know.
        updates.packages.put(path, sha256)
        async with updates.repo_lock:
            checkpoint = updates.repo.checkpoint()
            await asyncio.to_thread(updates.repo.publish, targets=p.targets.encode())
            try:
                async with ctx.services.db.transaction() as conn:
                    row["id"] = await store.add_release(conn, **row)
                    await ctx.audit(conn, "release.publish",
                                    f"release:{info.product}/{info.version}",
                                    sha256=sha256, length=length, kind=info.kind)
                    if info.kind == "regulation":  # every covered machine gets it, in waves
                        row["rollout"] = await ctx.services.rollouts.start(
                            conn, store.Release(**row), actor=AUTO_ROLLOUT_ACTOR, now=ctx.now)
            except BaseException:
                await asyncio.to_thread(updates.repo.restore, checkpoint)
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return row


class ListReleases(msgspec.Struct, forbid_unknown_fields=True):
    product: str | None = None


@method("releases.list", "viewer", ListReleases)
async def list_releases(ctx: Context, p: ListReleases) -> list[store.Release]:
    async with ctx.services.db.connect() as conn:
        return await store.list_releases(conn, p.product)


# ----------------------------------------------------------------------------- jobs
class PushUpdate(msgspec.Struct, forbid_unknown_fields=True):
    version: str
    machine: str | None = None
    customer: str | None = None
    product: str | None = None
    stop_product: bool = False


async def _machines(conn: Any, machine: str | None, customer: str | None) -> list[str]:
    if bool(machine) == bool(customer):
        raise ConfigError("name exactly one of --machine or --customer")
    if machine:
        return [(await fleet_store.get_agent(conn, machine)).id]
    cust = await fleet_store.get_customer(conn, customer)  # type: ignore[arg-type]
    ids = [a.id for a in await fleet_store.list_agents(conn, cust.id)
           if a.revoked_at is None]
    if not ids:
        raise NotFound(f"customer {cust.name} has no enrolled machine")
    return ids


async def _create_and_dispatch(ctx: Context, **kwargs: Any) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        if "machine" in kwargs:
            kwargs["agent_ids"] = await _machines(conn, kwargs.pop("machine"),
                                                  kwargs.pop("customer", None))
        job = await create_job(conn, actor=ctx.caller.name, now=ctx.now, **kwargs)
    if job["delivery"] == "network":
        await _updates(ctx).dispatch(job_id=job["id"])
    return job


@method("push.update", "technician", PushUpdate)
async def push_update(ctx: Context, p: PushUpdate) -> dict[str, Any]:
    return await _create_and_dispatch(
        ctx, kind="update", machine=p.machine, customer=p.customer, product=p.product,
        version=p.version, stop_product=p.stop_product,
    )


class PushReinstall(msgspec.Struct, forbid_unknown_fields=True):
    machine: str
    product: str | None = None
    version: str | None = None
    stop_product: bool = False


@method("push.reinstall", "technician", PushReinstall)
async def push_reinstall(ctx: Context, p: PushReinstall) -> dict[str, Any]:
    return await _create_and_dispatch(
        ctx, kind="reinstall", machine=p.machine, product=p.product, version=p.version,
        stop_product=p.stop_product,
    )


class PushVerify(msgspec.Struct, forbid_unknown_fields=True):
    machine: str
    product: str | None = None


@method("push.verify", "technician", PushVerify)
async def push_verify(ctx: Context, p: PushVerify) -> dict[str, Any]:
    return await _create_and_dispatch(ctx, kind="verify", machine=p.machine, product=p.product)


class ListJobs(msgspec.Struct, forbid_unknown_fields=True):
    open: bool = False
    limit: int = 100


@method("jobs.list", "viewer", ListJobs)
async def list_jobs(ctx: Context, p: ListJobs) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        return await store.list_jobs(conn, p.open, max(1, min(p.limit, 1000)))


class JobRef(msgspec.Struct, forbid_unknown_fields=True):
    id: int


@method("jobs.show", "viewer", JobRef)
async def show_job(ctx: Context, p: JobRef) -> dict[str, Any]:
    async with ctx.services.db.connect() as conn:
        job = await store.get_job(conn, p.id)
    progress = _updates(ctx).progress
    for machine in job["machines"]:
        sent, total = progress.get(machine["ref"], (None, None))
        machine["bytes_sent"], machine["bytes_total"] = sent, total
    return job


# ----------------------------------------------------------------------------- media
class Bundle(msgspec.Struct, forbid_unknown_fields=True):
    machine: str
    version: str
    product: str | None = None
    expiry_days: float = 30.0


@method("releases.bundle", "technician", Bundle, streams=True)
async def bundle(ctx: Context, p: Bundle) -> AsyncIterator[dict[str, Any]]:
    """Write a physical-media bundle for one machine and stream it back in pieces."""
    from careline.shared.bundle import write_bundle
    from careline.shared.trust import MAX_BUNDLE_EXPIRY

    if not 0 < p.expiry_days <= MAX_BUNDLE_EXPIRY.days:  # before a job is made for it
        raise ConfigError(f"--expires must be more than 0 and at most {MAX_BUNDLE_EXPIRY.days} days")
    updates = _updates(ctx)
    async with ctx.services.db.transaction() as conn:
        agent_id = (await fleet_store.get_agent(conn, p.machine)).id
        job = await create_job(
            conn, kind="update", agent_ids=[agent_id], actor=ctx.caller.name,
            product=p.product, version=p.version, delivery="media", now=ctx.now,
            reason="physical media",
        )
        part = await store.get_job_machine(conn, job["machines"][0]["ref"])
    assert part is not None  # made just above, in the same transaction
    expiry = dt.timedelta(days=p.expiry_days)
    instruction = await updates.make_instruction(part, lifetime=expiry)
    release = await updates._release(instruction.product, instruction.version)
    updates.uploads.mkdir(parents=True, exist_ok=True)
    out = updates.uploads / f"bundle-{part.ref}.careline-bundle"
    try:
        async with updates.repo_lock:
            await asyncio.to_thread(
                write_bundle, out, updates.repo, updates.instruction_key, instruction,
                updates.packages.path(release.sha256), expiry=expiry,
            )
        size = out.stat().st_size
        with await asyncio.to_thread(open, out, "rb") as f:
            offset = 0
            while data := await asyncio.to_thread(f.read, BUNDLE_CHUNK):
                yield {"offset": offset, "data": data}
                offset += len(data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
    yield {"job": job, "size": size}
