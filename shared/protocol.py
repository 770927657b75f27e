"""The messages agents, coordinator and technicians exchange, and their encoding.

Pure code: bytes in, typed messages out (or a ProtocolError), and back. Every message is a
msgpack map tagged by its `t` field; decoding validates types, so a handler never sees a
half-valid message. Three channels share one TLS port, each with its own message set:

    /enroll  one-time registration of an agent key with an enrollment token
    /agent   an enrolled agent: challenge-signed hello, heartbeats, events, commands
    /admin   a technician's CLI: requests and replies
"""

from __future__ import annotations

from types import UnionType
from typing import Any, Literal, TypeVar, overload

import msgspec

from careline.shared.errors import MessageTooLarge, ProtocolError

PROTOCOL_VERSION = 1
# Largest message on any channel: a package chunk with its envelope, or a diagnostics bundle.
MAX_MESSAGE_BYTES = 1 << 20
MAX_ADMIN_MESSAGE_BYTES = 8 << 20
CHUNK_BYTES = 256 << 10

ENROLL_PATH = "/enroll"
AGENT_PATH = "/agent"
ADMIN_PATH = "/admin"


class CloseCode:
    """Application close codes (4000–4999) with the reason shown to the user."""

    PROTOCOL = 4400  # malformed, oversized or unexpected message
    UNAUTHENTICATED = 4401  # unknown agent, bad signature, bad technician token
    REVOKED = 4403  # agent key revoked by a technician
    TIMEOUT = 4408  # handshake not completed in time
    REPLACED = 4409  # the same agent connected again; the older connection is closed
    TOKEN_REFUSED = 4410  # enrollment token unknown, expired or spent
    # A busy coordinator answers the upgrade itself with HTTP 503 and Retry-After.
    # Sent by the agent: it is stopping cleanly (service stopped, PC shutting down), so the
    # machine is "off", not "offline".
    AGENT_STOPPING = 4000

    # Codes after which reconnecting with the same identity cannot succeed.
    FATAL = frozenset({UNAUTHENTICATED, REVOKED, TOKEN_REFUSED})


class Message(msgspec.Struct, tag_field="t", forbid_unknown_fields=True, omit_defaults=True):
    pass


# ----------------------------------------------------------------------------- shared shapes
class DiskHealth(msgspec.Struct, forbid_unknown_fields=True):
    mount: str
    total: int
    used: int
    percent: float


class ProductHealth(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    version: str | None
    running: bool
    pid: int | None = None


class Problem(msgspec.Struct, forbid_unknown_fields=True):
    """A trouble condition that holds at this check (the coordinator suppresses flapping)."""

    kind: str  # disk_full | disk_failing | product_not_running | product_crash_loop | integrity_mismatch
    subject: str  # the disk mount or product name
    detail: str = ""


class Health(msgspec.Struct, forbid_unknown_fields=True):
    cpu_percent: float
    memory_total: int
    memory_used: int
    memory_percent: float
    disks: list[DiskHealth]
    boot_time: float
    uptime: float
    os: str
    agent_version: str
    products: list[ProductHealth]
    problems: list[Problem] = []


# ----------------------------------------------------------------------------- /enroll
class ServerIdentity(Message, tag="server_identity"):
    """First message on /enroll: lets the agent check the CA against its join string
    before it reveals the token."""

    ca_pem: str


class EnrollRequest(Message, tag="enroll"):
    token: str
    public_key: bytes  # raw Ed25519, 32 bytes
    hostname: str
    os: str
    agent_version: str
    products: list[str] = []
    # Hashed hardware identity (shared.hardware): a reinstalled PC is the same machine.
    hardware: dict[str, str] = {}
    replaces: str = ""  # the machine a technician says this reinstall is (id or hostname)


class Enrolled(Message, tag="enrolled"):
    agent_id: str
    customer_id: int
    heartbeat_interval: float
    # Update trust (issue 6): the vendor's TUF root and the coordinator's instruction key.
    tuf_root: bytes = b""
    instruction_key: bytes = b""  # raw Ed25519 public key


# ----------------------------------------------------------------------------- /agent
class Challenge(Message, tag="challenge"):
    nonce: bytes
    server_time: float


class Hello(Message, tag="hello"):
    agent_id: str
    signature: bytes  # Ed25519 over shared.keys.auth_payload(nonce, agent_id)
    agent_version: str
    protocol: int = PROTOCOL_VERSION


class Welcome(Message, tag="welcome"):
    heartbeat_interval: float
    server_time: float
    # Seconds over which the agent spreads its first reconnect after losing this connection:
    # the coordinator sizes it to its fleet, so a restart is not a stampede.
    reconnect_window: float = 10.0


class Heartbeat(Message, tag="heartbeat"):
    health: Health


class Event(Message, tag="event"):
    """Something the agent must not lose; kept in its outbox until acknowledged."""

    seq: int
    kind: str
    at: float
    data: dict[str, Any] = {}


class Ack(Message, tag="ack"):
    seq: int


class Ping(Message, tag="ping"):
    pass


class Diagnose(Message, tag="diagnose"):
    log_lines: int = 200
    max_bytes: int = 256 << 10


class RestartProduct(Message, tag="restart_product"):
    product: str


class InstallPackage(Message, tag="install_package"):
    """Install the package a signed instruction names (issue 6); the agent checks both the
    instruction and the vendor's TUF metadata before anything changes."""

    job: str
    instruction: bytes


class ReinstallProduct(Message, tag="reinstall_product"):
    job: str
    instruction: bytes


class VerifyIntegrity(Message, tag="verify_integrity"):
    job: str
    product: str | None = None


UpdateAction = InstallPackage | ReinstallProduct | VerifyIntegrity
Action = Ping | Diagnose | RestartProduct | InstallPackage | ReinstallProduct | VerifyIntegrity


class Command(Message, tag="command"):
    """A typed action the coordinator asks of an agent; never a shell line."""

    id: int
    action: Action


class CommandResult(Message, tag="command_result"):
    id: int
    ok: bool
    data: dict[str, Any] = {}
    error: str = ""


# ----------------------------------------------------------------------------- updates
class FetchMetadata(Message, tag="fetch_metadata"):
    """Agent asks for one TUF metadata file (e.g. "timestamp.json", "3.root.json")."""

    id: int
    name: str


class MetadataReply(Message, tag="metadata_reply"):
    id: int
    data: bytes | None = None  # None: the repository has no such file


class Download(Message, tag="download"):
    """Agent asks for its job's package from `offset` on (resume after a disconnect)."""

    job: str
    offset: int = 0


class Chunk(Message, tag="chunk"):
    job: str
    offset: int
    data: bytes = b""
    error: str = ""  # the coordinator cannot serve this download


AgentToServer = Hello | Heartbeat | Event | CommandResult | FetchMetadata | Download
ServerToAgent = Challenge | Welcome | Ack | Command | MetadataReply | Chunk
EnrollToServer = EnrollRequest
EnrollToAgent = ServerIdentity | Enrolled


# ----------------------------------------------------------------------------- /admin
class Request(Message, tag="request"):
    id: int
    method: str
    params: dict[str, Any] = {}


class Reply(Message, tag="reply"):
    """Answer to a request. `final=False` replies stream partial results (fan-out)."""

    id: int
    ok: bool = True
    result: Any = None
    error_code: str = ""
    error: str = ""
    final: bool = True


# ----------------------------------------------------------------------------- codec
M = TypeVar("M")

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


@overload
def decode(data: bytes | str, expected: type[M], limit: int = ...) -> M: ...


@overload
def decode(data: bytes | str, expected: UnionType, limit: int = ...) -> Any: ...


def decode(data: bytes | str, expected: Any, limit: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode one message of the `expected` type (or union), or raise ProtocolError."""
    if isinstance(data, str):
        raise ProtocolError("text frames are not part of the protocol; send binary msgpack")
    if len(data) > limit:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds the {limit}-byte limit")
    decoder = _decoders.get(expected)
    if decoder is None:
        decoder = _decoders[expected] = msgspec.msgpack.Decoder(expected)
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid message: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"undecodable message: {exc}") from None
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None


def to_builtins(value: Any) -> Any:
    """Plain dicts/lists for JSON output and storage."""
    return msgspec.to_builtins(value)


ChannelRole = Literal["agent", "admin", "enroll"]
