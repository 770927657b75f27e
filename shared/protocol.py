"""The messages agents, coordinator and technicians exchange, and their encoding.

Pure code: bytes in, typed messages out (or a ProtocolError), and back. Every message is a
msgpack map tagged by its `t` field; decoding validates types, so a handler never sees a
half-valid message. Three channels share one TLS port, each with its own message set:

    /enroll  one-time registration of an agent key with an enrollment token
    /agent   an enrolled agent: challenge-signed hello, heartbeats, events, commands
    /admin   a technician's CLI: requests and replies
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, overload

import msgspec
from msgspec import Meta

from careline.shared.errors import MessageTooLarge, ProtocolError

PROTOCOL_VERSION = 1
# Largest message on any channel: a package chunk with its envelope, or a diagnostics bundle.
MAX_MESSAGE_BYTES = 1 << 20
MAX_ADMIN_MESSAGE_BYTES = 8 << 20
CHUNK_BYTES = 256 << 10

# What one agent may make the coordinator hold: every agent is treated as possibly hostile
# after it has authenticated (a virus-infected PC), so what it sends is bounded at decode.
MAX_EVENT_BYTES = 64 << 10  # one encoded event
MAX_PROBLEMS = 32  # per heartbeat
MAX_DISKS = MAX_PRODUCTS = 64
MAX_DATA_ITEMS = 10_000  # values in an event's or a command result's free-form data
MAX_DATA_DEPTH = 16
# Kinds of event an agent may send; anything else is acknowledged and not stored.
EVENT_KINDS = frozenset({
    "unclean_shutdown", "update_step", "update_result", "verify_result", "integrity_mismatch",
    "disk_full", "disk_failing", "product_not_running", "product_crash_loop",
    "outbox_summary",  # events an agent's bounded outbox folded or dropped (issue 13)
})

ENROLL_PATH = "/enroll"
AGENT_PATH = "/agent"
# The product name of the agent's own releases (issue 17): the agent reports itself under it
# and installs such a release by replacing its own program (careline.agent.selfupdate).
AGENT_PRODUCT = "careline-agent"
ADMIN_PATH = "/admin"


class CloseCode:
    """Application close codes (4000–4999) with the reason shown to the user."""

    PROTOCOL = 4400  # malformed, oversized or unexpected message
    UNAUTHENTICATED = 4401  # unknown agent, bad signature, bad technician token
    REVOKED = 4403  # agent key revoked by a technician
    TIMEOUT = 4408  # handshake not completed in time
    REPLACED = 4409  # the same agent connected again; the older connection is closed
    TOKEN_REFUSED = 4410  # enrollment token unknown, expired or spent
    SLOW_DOWN = 4429  # over a quota; the reason ends with "retry after N s"
    # A busy coordinator answers the upgrade itself with HTTP 503 and Retry-After.
    # Sent by the agent: it is stopping cleanly (service stopped, PC shutting down), so the
    # machine is "off", not "offline".
    AGENT_STOPPING = 4000

    # Codes after which reconnecting with the same identity cannot succeed.
    FATAL = frozenset({UNAUTHENTICATED, REVOKED, TOKEN_REFUSED})


def slow_down_reason(what: str, retry_after: int) -> str:
    return f"{what}: slow down, retry after {retry_after} s"


def retry_after_of(reason: str) -> int | None:
    """The seconds a SLOW_DOWN close reason asks the agent to wait."""
    _, sep, tail = reason.rpartition("retry after ")
    number = tail.removesuffix(" s")
    return int(number) if sep and number.isdigit() else None


class Message(msgspec.Struct, tag_field="t", forbid_unknown_fields=True, omit_defaults=True):
    pass


# ----------------------------------------------------------------------------- bounded values
# Strings are bounded and never hold NUL (PostgreSQL refuses it in text and JSON); numbers
# are finite and fit a signed 64-bit column; timestamps lie between 1970 and 9999.
NO_NUL = r"^[^\x00]*$"
SHORT, NAME, DETAIL = 100, 255, 2000
Short = Annotated[str, Meta(max_length=SHORT, pattern=NO_NUL)]  # ids, versions, kinds
Name = Annotated[str, Meta(max_length=NAME, pattern=NO_NUL)]  # hostnames, mounts, products
Detail = Annotated[str, Meta(max_length=DETAIL, pattern=NO_NUL)]
Int = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Real = Annotated[float, Meta(ge=-1e15, le=1e15)]  # also refuses NaN and infinities
Percent = Annotated[float, Meta(ge=0, le=100)]
Timestamp = Annotated[float, Meta(ge=0, le=253_402_300_799)]  # 9999-12-31T23:59:59Z


def check_data(value: Any) -> None:
    """Free-form data (event data, command results) is plain JSON: str keys, finite
    numbers, no NUL, no bytes, bounded size and depth; else ValueError (a ValidationError
    when raised during decoding)."""
    budget = MAX_DATA_ITEMS
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise ValueError(f"data holds more than {MAX_DATA_ITEMS} values")
        if depth > MAX_DATA_DEPTH:
            raise ValueError(f"data nested deeper than {MAX_DATA_DEPTH}")
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not -(2**63) <= item < 2**63:
                raise ValueError("data holds an integer beyond 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("data holds a NaN or infinite number")
        elif isinstance(item, str):
            if "\x00" in item:
                raise ValueError("data holds a NUL character")
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            for key, v in item.items():
                if not isinstance(key, str) or "\x00" in key:
                    raise ValueError("data keys must be text without NUL")
                stack.append((v, depth + 1))
        else:
            raise ValueError(f"data holds a {type(item).__name__}; only JSON values are allowed")


# ----------------------------------------------------------------------------- shared shapes
class DiskHealth(msgspec.Struct, forbid_unknown_fields=True):
    mount: Name
    total: Count
    used: Count
    percent: Percent


class ProductHealth(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    version: Short | None
    running: bool
    pid: Count | None = None


class Problem(msgspec.Struct, forbid_unknown_fields=True):
    """A trouble condition that holds at this check (the coordinator suppresses flapping)."""

    kind: Short  # disk_full | disk_failing | product_not_running | product_crash_loop | integrity_mismatch
    subject: Name  # the disk mount or product name
    detail: Detail = ""


class Health(msgspec.Struct, forbid_unknown_fields=True):
    cpu_percent: Percent
    memory_total: Count
    memory_used: Count
    memory_percent: Percent
    disks: Annotated[list[DiskHealth], Meta(max_length=MAX_DISKS)]
    boot_time: Timestamp
    uptime: Real
    os: Name
    agent_version: Short
    products: Annotated[list[ProductHealth], Meta(max_length=MAX_PRODUCTS)]
    problems: Annotated[list[Problem], Meta(max_length=MAX_PROBLEMS)] = []


# ----------------------------------------------------------------------------- /enroll
class ServerIdentity(Message, tag="server_identity"):
    """First message on /enroll: lets the agent check the CA against its join string
    before it reveals the token."""

    ca_pem: str


class EnrollRequest(Message, tag="enroll"):
    token: Short
    public_key: Annotated[bytes, Meta(max_length=64)]  # raw Ed25519, 32 bytes
    hostname: Name
    os: Name
    agent_version: Short
    products: Annotated[list[Name], Meta(max_length=MAX_PRODUCTS)] = []
    # Hashed hardware identity (shared.hardware): a reinstalled PC is the same machine.
    hardware: Annotated[dict[Short, Short], Meta(max_length=8)] = {}
    replaces: Name = ""  # the machine a technician says this reinstall is (id or hostname)


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
    agent_id: Short
    signature: Annotated[bytes, Meta(max_length=128)]  # Ed25519 over keys.auth_payload(nonce, id)
    agent_version: Short
    protocol: Int = PROTOCOL_VERSION
    # Hashed hardware identity (shared.hardware), on every connection: machines enrolled
    # before agents reported it gain one, and a replaced network card is noticed.
    hardware: Annotated[dict[Short, Short], Meta(max_length=8)] = {}


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

    seq: Count
    kind: Short
    at: Timestamp
    data: dict[str, Any] = {}

    def __post_init__(self) -> None:
        check_data(self.data)


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
    id: Int
    ok: bool
    data: dict[str, Any] = {}
    error: Detail = ""

    def __post_init__(self) -> None:
        check_data(self.data)


# ----------------------------------------------------------------------------- updates
class FetchMetadata(Message, tag="fetch_metadata"):
    """Agent asks for one TUF metadata file (e.g. "timestamp.json", "3.root.json")."""

    id: Int
    name: Name


class MetadataReply(Message, tag="metadata_reply"):
    id: int
    data: bytes | None = None  # None: the repository has no such file


class Download(Message, tag="download"):
    """Agent asks for its job's package from `offset` on (resume after a disconnect)."""

    job: Short
    offset: Count = 0


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
    """Answer to a request. `final=False` replies stream partial results (fan-out); partials
    that came while the previous one was being sent travel together (`many=True`: `result`
    is the list of them). A long list is sent in parts (`part=True`, each a slice of it, the
    last one final) that the client joins into one list, so no reply outgrows the admin
    frame limit."""

    id: int
    ok: bool = True
    result: Any = None
    error_code: str = ""
    error: str = ""
    final: bool = True
    part: bool = False
    many: bool = False


REPLY_PART_BYTES = 1 << 20  # a list answer longer than this goes in parts of about this size


T = TypeVar("T")


def slices_by_size(items: Iterable[T], limit: int, size_of: Callable[[T], int]) -> list[list[T]]:
    """Consecutive slices of `items` whose sizes add up to at most `limit` each (an item
    larger than that alone in its slice); one slice if they fit."""
    slices: list[list[T]] = [[]]
    size = 0
    for item in items:
        item_size = size_of(item)
        if slices[-1] and size + item_size > limit:
            slices.append([])
            size = 0
        slices[-1].append(item)
        size += item_size
    return slices


def reply_parts(items: list[Any], limit: int = REPLY_PART_BYTES) -> list[list[Any]]:
    """Split a list answer into consecutive slices of at most about `limit` encoded bytes
    each (an item larger than that alone in its slice); one slice if it fits."""
    return slices_by_size(items, limit, lambda item: len(_encoder.encode(item)))


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
