"""One-time enrollment: make the agent's key, pin the coordinator's CA, register the key."""

from __future__ import annotations

import asyncio
import socket

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidProxy
from websockets.proxy import parse_proxy

from careline.agent import platform as osx
from careline.agent.state import DIRECT, AgentConfig, ProductConfig, StateDir, websocket_proxy
from careline.shared import __version__
from careline.shared import protocol as p
from careline.shared.errors import AuthError, ConfigError, Unreachable, VerificationError
from careline.shared.keys import (
    JoinString,
    cert_fingerprint,
    check_issued_by,
    generate_key,
    load_private_key,
    public_bytes,
    save_private_key,
)
from careline.shared.tls import first_contact_context

ENROLL_TIMEOUT = 15.0  # for the connection, and again for each answer


async def register(join: JoinString, public_key: bytes, *, hostname: str, os: str,
                   products: list[str], open_timeout: float = ENROLL_TIMEOUT,
                   hardware: dict[str, str] | None = None,
                   replaces: str = "", proxy: str | None = None) -> tuple[str, p.Enrolled]:
    """The /enroll exchange: check the coordinator against the CA the join string pins
    before the token leaves this machine, then register `public_key`. Returns that CA (PEM)
    and the coordinator's answer. Every wait is bounded by `open_timeout` (TimeoutError)."""
    async with connect(
        join.server_url + p.ENROLL_PATH, ssl=first_contact_context(), compression=None,
        max_size=p.MAX_MESSAGE_BYTES, open_timeout=open_timeout, close_timeout=2,
        proxy=websocket_proxy(proxy),
    ) as ws:
        identity = p.decode(await asyncio.wait_for(ws.recv(), open_timeout), p.ServerIdentity)
        if cert_fingerprint(identity.ca_pem) != join.ca_fingerprint:
            raise AuthError("coordinator CA does not match the join string's fingerprint")
        leaf = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        check_issued_by(leaf, identity.ca_pem)
        await ws.send(p.encode(p.EnrollRequest(
            token=join.token, public_key=public_key, hostname=hostname, os=os,
            agent_version=__version__, products=products, hardware=hardware or {},
            replaces=replaces,
        )))
        return identity.ca_pem, p.decode(await asyncio.wait_for(ws.recv(), open_timeout),
                                          p.Enrolled)


async def enroll(join: JoinString, state: StateDir, products: list[ProductConfig],
                 replaces: str = "", proxy: str | None = None) -> AgentConfig:
    """Register this PC. After a reinstall the coordinator recognises its hardware and
    gives back the machine it was (`replaces` names it when a technician knows). `proxy`
    (a URL or "direct") is kept for every later connection."""
    if proxy is not None and proxy != DIRECT:
        try:
            parse_proxy(proxy)
        except InvalidProxy as exc:
            raise ConfigError(f"--proxy: {exc}") from None
    if state.enrolled():
        raise ConfigError(f"already enrolled in {state.path}; use another --state or remove it")
    osx.secure_state_dir(state.path)
    # A key left by an earlier, failed attempt is reused: it was never accepted anywhere.
    key = load_private_key(state.key_file) if state.key_file.exists() else None
    if key is None:
        key = generate_key()
        save_private_key(key, state.key_file)
    try:
        ca_pem, enrolled = await register(
            join, public_bytes(key), hostname=socket.gethostname(), os=osx.os_description(),
            products=[product.name for product in products],
            hardware=osx.hardware_identity(), replaces=replaces, proxy=proxy)
    except ConnectionClosed as exc:
        reason = exc.rcvd.reason if exc.rcvd else "connection lost"
        raise AuthError(f"enrollment refused: {reason}") from None
    except TimeoutError:
        raise ConfigError(f"the coordinator at {join.server_url} did not answer within "
                          f"{ENROLL_TIMEOUT:g}s; try again later") from None
    except OSError as exc:
        raise Unreachable(f"cannot reach the coordinator at {join.server_url}: {exc}") from None
    from careline.agent.updater import store_enrollment_trust

    try:
        store_enrollment_trust(state, enrolled.tuf_root, enrolled.instruction_key, join.root_pin)
    except VerificationError:
        # Registered with a coordinator we do not trust: a retry starts with a fresh key.
        state.key_file.unlink()
        raise
    (state.ca_file).write_text(ca_pem)
    config = AgentConfig(
        agent_id=enrolled.agent_id, customer_id=enrolled.customer_id,
        server_url=join.server_url, heartbeat_interval=enrolled.heartbeat_interval,
        products=products, proxy=proxy,
    )
    state.save_config(config)  # written last: its presence means "enrolled"
    return config
