"""`careline release|releases|push|jobs`: packages, release keys, update jobs (issue 6).

The release keys (root, targets) never leave the release manager's `--keys DIR`: signing
happens here, in the CLI, and only signed metadata goes to the coordinator.
Imports are deferred to the command that needs them (python-tuf is slow to import).
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path
from typing import Any

import click

from careline.coordinator.cli_common import CarelineGroup, technician_command

UPLOAD_CHUNK = 4 << 20
TERMINAL = {"installed", "rolled_back", "refused", "failed", "verified", "mismatch",
            "cancelled"}


def _emit(data: Any, as_json: bool, columns: list[str] | None = None, title: str = "") -> None:
    from careline.coordinator.render import emit

    emit(data, as_json, columns, title=title)


keys_option = click.option("--keys", "keys", required=True, type=click.Path(file_okay=False),
                           help="The release manager's key directory (offline keys).")


# ============================================================================ release
@click.group(cls=CarelineGroup)
def release() -> None:
    """Build, sign and publish update packages; physical-media bundles."""


@release.group("keys")
def release_keys() -> None:
    """The vendor's offline release keys (root, targets)."""


@technician_command(release_keys, "init", timeout=120)
@keys_option
def keys_init(client: Any, as_json: bool, keys: str) -> None:
    """Create root and targets keys in --keys and publish root v1 to the coordinator."""
    from careline.shared.trust import init_release_keys

    online = client.call("releases.online_keys")["keys"].encode()
    metadata = init_release_keys(Path(keys), online)
    assert metadata.targets is not None
    client.call("releases.publish_metadata", root=metadata.root.decode(),
                targets=metadata.targets.decode())
    from careline.shared.keys import root_pin

    result = {"keys": str(Path(keys).resolve()), "root_version": 1,
              "root_pin": root_pin(metadata.root)}
    if as_json:
        _emit(result, True)
    else:
        click.echo(f"Release keys created in {result['keys']}; root v1 published.")
        click.echo("Keep this directory offline; join strings made from now on pin this root:")
        click.echo(f"  {result['root_pin']}")
        click.echo("Agents enrolled earlier accept updates after `careline-agent pin-root "
                   f"{result['root_pin']}` on each machine.")


@technician_command(release_keys, "rotate", timeout=120)
@keys_option
@click.option("--role", required=True,
              type=click.Choice(["root", "targets", "snapshot", "timestamp"]))
def keys_rotate(client: Any, as_json: bool, keys: str, role: str) -> None:
    """Replace one role's key and publish root N+1 (agents follow it on their next refresh)."""
    from careline.shared.trust import rotate_key

    kwargs: dict[str, Any] = {}
    if role in ("snapshot", "timestamp"):
        kwargs["online_key"] = client.call("releases.new_online_key", role=role)["key"].encode()
    elif role == "targets":
        kwargs["current_targets"] = client.call("releases.current_targets")["targets"].encode()
    metadata = rotate_key(Path(keys), role, **kwargs)
    client.call("releases.publish_metadata", root=metadata.root.decode(),
                targets=metadata.targets.decode() if metadata.targets else None)
    import json

    version = json.loads(metadata.root)["signed"]["version"]
    result = {"role": role, "root_version": version}
    if as_json:
        _emit(result, True)
    else:
        click.echo(f"Rotated the {role} key; root v{version} published.")


@release.command("build")
@click.argument("source_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--product", required=True)
@click.option("--version", "version", required=True)
@click.option("--kind", required=True, type=click.Choice(["bugfix", "regulation", "feature"]))
@click.option("--regulation-ref", default=None, help="The circular/decree it implements.")
@click.option("--effective", default=None, help="Date it takes effect (YYYY-MM-DD).")
@click.option("--notes", default=None)
@click.option("--check", "check", default=None,
              help="Check command run in the install dir after install (argv, shell-quoted).")
@click.option("--out", default=None, help="Package file (default NAME-V.careline here).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def release_build(source_dir: str, product: str, version: str, kind: str,
                  regulation_ref: str | None, effective: str | None, notes: str | None,
                  check: str | None, out: str | None, as_json: bool) -> None:
    """Make one package file from SOURCE_DIR (files + manifest of sha256, size, mode)."""
    import datetime as dt
    import hashlib
    import shlex

    from careline.shared.errors import ConfigError
    from careline.shared.package import build_package

    try:
        effective_date = dt.date.fromisoformat(effective) if effective else None
    except ValueError:
        raise ConfigError(f"--effective {effective!r} is not YYYY-MM-DD") from None
    path = build_package(
        Path(source_dir), Path(out) if out else Path.cwd(), product, version,
        kind,  # type: ignore[arg-type]
        regulation_ref=regulation_ref, effective=effective_date, notes=notes,
        check=shlex.split(check) if check else None,
    )
    data = path.read_bytes()
    result = {"package": str(path), "product": product, "version": version,
              "length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if as_json:
        _emit(result, True)
    else:
        click.echo(f"Built {path} ({len(data)} bytes)")


@technician_command(release, "publish", timeout=120)
@click.argument("package", type=click.Path(exists=True, dir_okay=False))
@keys_option
def release_publish(client: Any, as_json: bool, package: str, keys: str) -> None:
    """Sign PACKAGE into the targets metadata with --keys and upload both."""
    from careline.shared.trust import sign_targets, target_for_package

    path = Path(package)
    target = target_for_package(path)
    current = client.call("releases.current_targets")["targets"].encode()
    targets = sign_targets(Path(keys), current, [target])
    upload = None
    offset = 0
    with open(path, "rb") as f:
        while data := f.read(UPLOAD_CHUNK):
            reply = client.call("releases.upload", upload=upload, offset=offset, data=data)
            upload, offset = reply["upload"], reply["offset"]
    row = client.call("releases.publish", upload=upload, targets=targets.decode())
    if as_json:
        _emit(row, True)
    else:
        click.echo(f"Published {row['product']} {row['version']} ({row['kind']}, "
                   f"{row['length']} bytes, sha256 {row['sha256'][:16]}...)")


@technician_command(release, "bundle", timeout=120)
@click.option("--machine", required=True)
@click.option("--version", "version", required=True)
@click.option("--product", default=None)
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--expires", default="30d", show_default=True,
              help="How long the bundle stays valid (the post takes time).")
def release_bundle(client: Any, as_json: bool, machine: str, version: str,
                   product: str | None, out: str, expires: str) -> None:
    """Write one file with everything an offline machine needs to install VERSION."""
    from careline.shared.units import parse_duration

    days = parse_duration(expires).total_seconds() / 86400
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.part")
    info: dict[str, Any] = {}
    with open(tmp, "wb") as f:
        for piece in client.stream("releases.bundle", machine=machine, version=version,
                                   product=product, expiry_days=days):
            if piece is None:
                continue
            if "data" in piece:
                data = piece["data"]
                f.write(base64.b64decode(data) if isinstance(data, str) else data)
            else:
                info = piece
    tmp.replace(out_path)
    result = {"bundle": str(out_path), "size": info.get("size"), "job": info.get("job", {})}
    if as_json:
        _emit(result, True)
    else:
        click.echo(f"Wrote {out_path} ({result['size']} bytes) for job {result['job'].get('id')}")


# ============================================================================ releases
@click.group(cls=CarelineGroup)
def releases() -> None:
    """Published releases."""


@technician_command(releases, "list")
@click.option("--product", default=None)
def releases_list(client: Any, as_json: bool, product: str | None) -> None:
    rows = client.call("releases.list", product=product)
    _emit(rows, as_json, ["product", "version", "kind", "regulation_ref", "effective",
                          "length", "published_at", "published_by"], title="releases")


# ============================================================================ push
@click.group(cls=CarelineGroup)
def push() -> None:
    """Create update, reinstall and verify jobs."""


def _print_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _emit(job, True)
        return
    what = f"{job['kind']} {job.get('product') or ''} {job.get('version') or ''}".strip()
    click.echo(f"Job {job['id']}: {what} on {len(job['machines'])} machine(s)")
    for m in job["machines"]:
        version = f" -> {m['version']}" if m.get("version") else ""
        click.echo(f"  {m['agent_id'][:12]} {m.get('hostname', '')} {m['status']}{version}")
    click.echo(f"Follow it with: careline jobs show {job['id']} --follow")


@technician_command(push, "update")
@click.option("--machine", default=None)
@click.option("--customer", default=None)
@click.option("--version", "version", required=True)
@click.option("--product", default=None)
@click.option("--stop-product", is_flag=True, help="Stop the product to install, restart it.")
def push_update(client: Any, as_json: bool, machine: str | None, customer: str | None,
                version: str, product: str | None, stop_product: bool) -> None:
    """Install release VERSION on a machine or on all of a customer's machines."""
    _print_job(client.call("push.update", machine=machine, customer=customer, version=version,
                           product=product, stop_product=stop_product), as_json)


@technician_command(push, "reinstall")
@click.option("--machine", required=True)
@click.option("--product", default=None)
@click.option("--version", "version", default=None, help="Default: the installed version.")
@click.option("--stop-product", is_flag=True, help="Stop the product to install, restart it.")
def push_reinstall(client: Any, as_json: bool, machine: str, product: str | None,
                   version: str | None, stop_product: bool) -> None:
    """Put a clean copy of the entitled version back (the data directory is kept)."""
    _print_job(client.call("push.reinstall", machine=machine, product=product,
                           version=version, stop_product=stop_product), as_json)


@technician_command(push, "verify")
@click.option("--machine", required=True)
@click.option("--product", default=None)
def push_verify(client: Any, as_json: bool, machine: str, product: str | None) -> None:
    """Re-check a machine's installed files against their manifests now."""
    _print_job(client.call("push.verify", machine=machine, product=product), as_json)


# ============================================================================ jobs
@click.group(cls=CarelineGroup)
def jobs() -> None:
    """Update jobs and each machine's progress."""


@technician_command(jobs, "list")
@click.option("--open", "open_only", is_flag=True, help="Only jobs with unfinished machines.")
def jobs_list(client: Any, as_json: bool, open_only: bool) -> None:
    rows = client.call("jobs.list", open=open_only)
    _emit(rows, as_json, ["id", "kind", "product", "version", "delivery", "machines",
                          "installed", "finished", "created_by", "created_at"], title="jobs")


def _bar(done: int | None, total: int | None, width: int = 24) -> str:
    if not total or done is None:
        return ""
    filled = int(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {100 * done // total:3d}%"


def _render_job(job: dict[str, Any]) -> str:
    from careline.coordinator.render import _cell

    what = f"{job['kind']} {job.get('product') or ''} {job.get('version') or ''}".strip()
    lines = [f"Job {job['id']}: {what} ({job['delivery']}) by {job['created_by']} "
             f"at {_cell(job['created_at'])}"]
    for m in job["machines"]:
        lines.append(f"  {m['agent_id'][:12]} {m['hostname']:<20} {m['status']:<26} "
                     f"{_bar(m.get('bytes_sent'), m.get('bytes_total'))}")
        for step in m["steps"]:
            detail = f"  {step['detail']}" if step.get("detail") else ""
            lines.append(f"      {_cell(step['at'])}  {step['step']}{detail}")
    return "\n".join(lines)


@technician_command(jobs, "show")
@click.argument("job_id", type=int)
@click.option("--follow", is_flag=True, help="Refresh until every machine has finished.")
def jobs_show(client: Any, as_json: bool, job_id: int, follow: bool) -> None:
    """Each machine's steps, times and outcome."""
    tty = sys.stdout.isatty()
    previous_lines = 0
    while True:
        job = client.call("jobs.show", id=job_id)
        if as_json:
            if not follow or not job["open"]:
                _emit(job, True)
                return
        else:
            text = _render_job(job)
            if tty and previous_lines:
                sys.stdout.write(f"\x1b[{previous_lines}F\x1b[J")
            if tty or not follow or not job["open"]:
                click.echo(text)
                previous_lines = text.count("\n") + 1
            if not follow or not job["open"]:
                return
        time.sleep(1.0)
