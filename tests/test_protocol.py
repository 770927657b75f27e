"""shared.protocol: every message round-trips, and nothing but a valid message gets through."""

from __future__ import annotations

import inspect
import json
import math
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import careline.shared.protocol as p
from careline.shared.errors import MessageTooLarge, ProtocolError

# ----------------------------------------------------------------------------- strategies
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
counts = st.integers(min_value=0, max_value=2**63 - 1)
floats = st.floats(allow_nan=False)  # NaN != NaN would make equality meaningless
# What an agent may send is bounded (see "bounded values" in shared/protocol.py).
reals = st.floats(min_value=-1e15, max_value=1e15)
percents = st.floats(min_value=0, max_value=100)
stamps = st.floats(min_value=0, max_value=253_402_300_799)
text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)
blobs = st.binary(max_size=64)

scalars = st.none() | st.booleans() | i64 | floats | text | blobs
any_value = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
json_value = st.recursive(
    st.none() | st.booleans() | i64 | reals | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
json_maps = st.dictionaries(text, json_value, max_size=5)

disk = st.builds(p.DiskHealth, mount=text, total=counts, used=counts, percent=percents)
product = st.builds(
    p.ProductHealth, name=text, version=st.none() | text, running=st.booleans(),
    pid=st.none() | counts,
)
problem = st.builds(p.Problem, kind=text, subject=text, detail=text)
health = st.builds(
    p.Health, cpu_percent=percents, memory_total=counts, memory_used=counts,
    memory_percent=percents, disks=st.lists(disk, max_size=3), boot_time=stamps, uptime=reals,
    os=text, agent_version=text, products=st.lists(product, max_size=3),
    problems=st.lists(problem, max_size=3),
)
ACTIONS: dict[type[p.Message], st.SearchStrategy[Any]] = {
    p.Ping: st.builds(p.Ping),
    p.Diagnose: st.builds(p.Diagnose, log_lines=i64, max_bytes=i64),
    p.RestartProduct: st.builds(p.RestartProduct, product=text),
    p.InstallPackage: st.builds(p.InstallPackage, job=text, instruction=blobs),
    p.ReinstallProduct: st.builds(p.ReinstallProduct, job=text, instruction=blobs),
    p.VerifyIntegrity: st.builds(p.VerifyIntegrity, job=text, product=st.none() | text),
}
actions = st.one_of(*ACTIONS.values())

STRATEGIES: dict[type[p.Message], st.SearchStrategy[Any]] = {
    **ACTIONS,
    p.ServerIdentity: st.builds(p.ServerIdentity, ca_pem=text),
    p.EnrollRequest: st.builds(
        p.EnrollRequest, token=text, public_key=blobs, hostname=text, os=text,
        agent_version=text, products=st.lists(text, max_size=4),
    ),
    p.Enrolled: st.builds(
        p.Enrolled, agent_id=text, customer_id=i64, heartbeat_interval=floats,
        tuf_root=blobs, instruction_key=blobs,
    ),
    p.Challenge: st.builds(p.Challenge, nonce=blobs, server_time=floats),
    p.Hello: st.builds(
        p.Hello, agent_id=text, signature=blobs, agent_version=text, protocol=i64
    ),
    p.Welcome: st.builds(p.Welcome, heartbeat_interval=floats, server_time=floats),
    p.Heartbeat: st.builds(p.Heartbeat, health=health),
    p.Event: st.builds(p.Event, seq=counts, kind=text, at=stamps, data=json_maps),
    p.Ack: st.builds(p.Ack, seq=i64),
    p.Command: st.builds(p.Command, id=i64, action=actions),
    p.CommandResult: st.builds(p.CommandResult, id=i64, ok=st.booleans(), data=json_maps, error=text),
    p.FetchMetadata: st.builds(p.FetchMetadata, id=i64, name=text),
    p.MetadataReply: st.builds(p.MetadataReply, id=i64, data=st.none() | blobs),
    p.Download: st.builds(p.Download, job=text, offset=counts),
    p.Chunk: st.builds(p.Chunk, job=text, offset=i64, data=blobs, error=text),
    p.Request: st.builds(p.Request, id=i64, method=text, params=json_maps),
    p.Reply: st.builds(
        p.Reply, id=i64, ok=st.booleans(), result=any_value, error_code=text, error=text,
        final=st.booleans(),
    ),
}

# What each side decodes on each channel (see coordinator/server.py, agent/runner.py).
CHANNELS: dict[str, Any] = {
    "AgentToServer": p.AgentToServer,
    "ServerToAgent": p.ServerToAgent,
    "EnrollToServer": p.EnrollToServer,
    "EnrollToAgent": p.EnrollToAgent,
    "Action": p.Action,
    "UpdateAction": p.UpdateAction,
    "Request": p.Request,
    "Reply": p.Reply,
}
# Typed Any: mypy cannot express a union of Struct types as decode()'s `type[M]`.
A2S: Any = p.AgentToServer
S2A: Any = p.ServerToAgent


def members(channel: Any) -> tuple[type[Any], ...]:
    args = typing.get_args(channel)
    return args if args else (channel,)


CHANNEL_OF: dict[type, str] = {
    cls: name for name, channel in CHANNELS.items() if "Action" not in name
    for cls in members(channel)
}
for _cls in members(p.Action):
    CHANNEL_OF[_cls] = "Action"

any_message = st.one_of(*STRATEGIES.values())

# One concrete, valid instance of each type for the table-driven rejection tests.
SAMPLES: dict[type[p.Message], p.Message] = {
    p.ServerIdentity: p.ServerIdentity(ca_pem="-----BEGIN CERTIFICATE-----"),
    p.EnrollRequest: p.EnrollRequest(
        token="cle_x", public_key=b"k" * 32, hostname="pc", os="Linux", agent_version="1.0",
        products=["acct"],
    ),
    p.Enrolled: p.Enrolled(agent_id="ag-x", customer_id=1, heartbeat_interval=30.0,
                           tuf_root=b"{}", instruction_key=b"k" * 32),
    p.Challenge: p.Challenge(nonce=b"n" * 32, server_time=1.5),
    p.Hello: p.Hello(agent_id="ag-x", signature=b"s" * 64, agent_version="1.0"),
    p.Welcome: p.Welcome(heartbeat_interval=30.0, server_time=2.5),
    p.Heartbeat: p.Heartbeat(
        health=p.Health(
            cpu_percent=1.0, memory_total=10, memory_used=5, memory_percent=50.0,
            disks=[p.DiskHealth("/", 100, 50, 50.0)], boot_time=1.0, uptime=2.0, os="Linux",
            agent_version="1.0", products=[p.ProductHealth("acct", "2.0", True, 42)],
            problems=[p.Problem("disk_full", "/", "99%")],
        )
    ),
    p.Event: p.Event(seq=7, kind="boot", at=3.0, data={"a": [1, 2]}),
    p.Ack: p.Ack(seq=7),
    p.Ping: p.Ping(),
    p.Diagnose: p.Diagnose(log_lines=10, max_bytes=100),
    p.RestartProduct: p.RestartProduct(product="acct"),
    p.InstallPackage: p.InstallPackage(job="j1", instruction=b"signed"),
    p.ReinstallProduct: p.ReinstallProduct(job="j2", instruction=b"signed"),
    p.VerifyIntegrity: p.VerifyIntegrity(job="j3", product="acct"),
    p.Command: p.Command(id=1, action=p.RestartProduct(product="acct")),
    p.FetchMetadata: p.FetchMetadata(id=2, name="timestamp.json"),
    p.MetadataReply: p.MetadataReply(id=2, data=b"{}"),
    p.Download: p.Download(job="j1", offset=4096),
    p.Chunk: p.Chunk(job="j1", offset=4096, data=b"\x00" * 16),
    p.CommandResult: p.CommandResult(id=1, ok=False, data={"x": 1}, error="boom"),
    p.Request: p.Request(id=1, method="agents.list", params={"customer": "Acme"}),
    p.Reply: p.Reply(id=1, ok=True, result={"rows": [1]}, final=False),
}


def raw_map(message: p.Message) -> dict[str, Any]:
    """The message as the plain msgpack map a peer would put on the wire."""
    return dict(msgspec.msgpack.decode(p.encode(message)))


def required_fields(cls: type) -> list[str]:
    return [
        f.encode_name for f in msgspec.structs.fields(cls)
        if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
    ]


# ----------------------------------------------------------------------------- coverage
def test_every_message_type_has_a_strategy_sample_and_channel() -> None:
    defined = {
        obj for _, obj in inspect.getmembers(p, inspect.isclass)
        if issubclass(obj, p.Message) and obj is not p.Message
    }
    assert defined == set(STRATEGIES) == set(SAMPLES) == set(CHANNEL_OF)


def test_tags_are_unique() -> None:
    tags = [cls.__struct_config__.tag for cls in STRATEGIES]
    assert len(tags) == len(set(tags))


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_as_own_type_and_channel(cls: type[p.Message], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    encoded = p.encode(message)
    assert isinstance(encoded, bytes)
    assert p.decode(encoded, cls) == message
    back = p.decode(encoded, CHANNELS[CHANNEL_OF[cls]])
    assert type(back) is cls
    assert back == message


def test_samples_round_trip_and_carry_their_tag() -> None:
    for cls, message in SAMPLES.items():
        assert raw_map(message)["t"] == cls.__struct_config__.tag
        assert p.decode(p.encode(message), CHANNELS[CHANNEL_OF[cls]]) == message


def test_defaults_are_omitted_on_the_wire_and_restored() -> None:
    hello = p.Hello(agent_id="a", signature=b"s", agent_version="1")
    assert "protocol" not in raw_map(hello)
    assert p.decode(p.encode(hello), p.Hello).protocol == p.PROTOCOL_VERSION


def test_nested_action_union_in_command() -> None:
    for cls in members(p.Action):
        action: Any = SAMPLES[cls]
        got: Any = p.decode(p.encode(p.Command(id=3, action=action)), S2A)
        assert isinstance(got, p.Command)
        assert got.action == action
        assert type(got.action) is type(action)


# ----------------------------------------------------------------------------- wrong channel
@settings(max_examples=150)
@given(message=any_message, channel=st.sampled_from(sorted(CHANNELS)))
def test_message_is_rejected_on_a_channel_it_does_not_belong_to(
    message: p.Message, channel: str
) -> None:
    encoded = p.encode(message)
    if type(message) in members(CHANNELS[channel]):
        assert p.decode(encoded, CHANNELS[channel]) == message
    else:
        with pytest.raises(ProtocolError):
            p.decode(encoded, CHANNELS[channel])


@pytest.mark.parametrize(
    ("message", "channel"),
    [
        (SAMPLES[p.Hello], p.ServerToAgent),
        (SAMPLES[p.Challenge], p.AgentToServer),
        (SAMPLES[p.Ack], p.AgentToServer),
        (SAMPLES[p.Event], p.ServerToAgent),
        (SAMPLES[p.EnrollRequest], p.AgentToServer),
        (SAMPLES[p.Request], p.AgentToServer),
        (SAMPLES[p.Enrolled], p.ServerToAgent),
        (SAMPLES[p.Hello], p.EnrollRequest),
        (SAMPLES[p.Welcome], p.Challenge),
        (SAMPLES[p.Reply], p.Request),
        # An action on its own is not a command: only Command carries it to an agent.
        (SAMPLES[p.Ping], p.ServerToAgent),
    ],
    ids=lambda v: getattr(v, "__name__", type(v).__name__),
)
def test_known_cross_channel_confusions_are_refused(message: p.Message, channel: Any) -> None:
    with pytest.raises(ProtocolError, match="invalid message"):
        p.decode(p.encode(message), channel)


# ----------------------------------------------------------------------------- malformed
@pytest.mark.parametrize("channel", sorted(CHANNELS))
@settings(max_examples=150)
@given(data=st.binary(max_size=1024))
def test_random_bytes_raise_only_protocol_error(channel: str, data: bytes) -> None:
    try:
        result = p.decode(data, CHANNELS[channel])
    except ProtocolError:
        return
    assert isinstance(result, members(CHANNELS[channel]))


tags = st.sampled_from([cls.__struct_config__.tag for cls in STRATEGIES] + ["nope", ""])
field_names = st.sampled_from(
    sorted({f.encode_name for cls in STRATEGIES for f in msgspec.structs.fields(cls)})
)


@settings(max_examples=150)
@given(
    tag=tags | i64 | st.none(),
    fields=st.dictionaries(field_names | text, any_value, max_size=6),
    channel=st.sampled_from(sorted(CHANNELS)),
)
def test_random_maps_with_plausible_shape_raise_only_protocol_error(
    tag: Any, fields: dict[str, Any], channel: str
) -> None:
    encoded = msgspec.msgpack.encode({**fields, "t": tag})
    try:
        result: Any = p.decode(encoded, CHANNELS[channel])
    except ProtocolError:
        return
    assert isinstance(result, members(CHANNELS[channel]))
    # Whatever got through re-encodes to a message that decodes to itself.
    assert p.decode(p.encode(result), CHANNELS[channel]) == result


@settings(max_examples=100)
@given(message=any_message, data=st.data())
def test_truncated_messages_are_refused(message: p.Message, data: st.DataObject) -> None:
    encoded = p.encode(message)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(ProtocolError):
        p.decode(encoded[:cut], CHANNELS[CHANNEL_OF[type(message)]])


@settings(max_examples=100)
@given(message=any_message, extra=st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(message: p.Message, extra: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode(p.encode(message) + extra, CHANNELS[CHANNEL_OF[type(message)]])


@pytest.mark.parametrize(
    ("cls", "field", "bad"),
    [
        (p.Hello, "signature", "not-bytes"),
        (p.Hello, "agent_id", 5),
        (p.Hello, "protocol", "1"),
        (p.Event, "seq", "7"),
        (p.Event, "seq", 1.5),
        (p.Event, "at", "now"),
        (p.Event, "data", [1, 2]),
        (p.Event, "data", {1: "int key"}),
        (p.Ack, "seq", None),
        (p.Challenge, "nonce", 123),
        (p.CommandResult, "ok", "yes"),
        (p.Command, "action", {"t": "reboot"}),
        (p.Command, "action", {"product": "acct"}),
        (p.Command, "action", "ping"),
        (p.Heartbeat, "health", {"cpu_percent": 1.0}),
        (p.EnrollRequest, "products", "acct"),
        (p.EnrollRequest, "public_key", [1, 2, 3]),
        (p.Request, "id", True),
        (p.Reply, "final", 0),
    ],
)
def test_wrong_field_types_are_refused(cls: type[p.Message], field: str, bad: Any) -> None:
    raw = raw_map(SAMPLES[cls])
    raw[field] = bad
    with pytest.raises(ProtocolError, match="invalid message"):
        p.decode(msgspec.msgpack.encode(raw), CHANNELS[CHANNEL_OF[cls]])


def test_wrong_type_nested_deep_in_health_is_refused() -> None:
    raw = raw_map(SAMPLES[p.Heartbeat])
    raw["health"]["disks"][0]["total"] = "lots"
    with pytest.raises(ProtocolError, match=r"disks\[0\]\.total"):
        p.decode(msgspec.msgpack.encode(raw), A2S)


@pytest.mark.parametrize("tag", ["nope", "HELLO", "", 1, None, b"hello"])
@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_unknown_or_malformed_tags_are_refused(tag: Any, channel: str) -> None:
    raw = raw_map(SAMPLES[p.Hello])
    raw["t"] = tag
    with pytest.raises(ProtocolError):
        p.decode(msgspec.msgpack.encode(raw), CHANNELS[channel])


@pytest.mark.parametrize("channel", ["AgentToServer", "ServerToAgent", "EnrollToAgent", "Action"])
def test_union_channels_require_the_tag(channel: str) -> None:
    raw = raw_map(SAMPLES[members(CHANNELS[channel])[0]])
    del raw["t"]
    with pytest.raises(ProtocolError, match="`t`"):
        p.decode(msgspec.msgpack.encode(raw), CHANNELS[channel])


REQUIRED = [(cls, name) for cls in SAMPLES for name in required_fields(cls)]


@pytest.mark.parametrize(
    ("cls", "field"), REQUIRED, ids=[f"{c.__name__}.{f}" for c, f in REQUIRED]
)
def test_missing_required_field_is_refused(cls: type[p.Message], field: str) -> None:
    raw = raw_map(SAMPLES[cls])
    del raw[field]
    with pytest.raises(ProtocolError, match=f"missing required field `{field}`"):
        p.decode(msgspec.msgpack.encode(raw), CHANNELS[CHANNEL_OF[cls]])


def test_required_field_table_is_not_empty() -> None:
    # Guards the parametrisation above against silently testing nothing.
    assert ("Hello", "signature") in {(c.__name__, f) for c, f in REQUIRED}
    assert ("Event", "data") not in {(c.__name__, f) for c, f in REQUIRED}


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_unknown_fields_are_refused(cls: type[p.Message]) -> None:
    raw = raw_map(SAMPLES[cls])
    raw["sneaky"] = 1
    with pytest.raises(ProtocolError, match="sneaky"):
        p.decode(msgspec.msgpack.encode(raw), CHANNELS[CHANNEL_OF[cls]])


def test_unknown_field_in_nested_struct_is_refused() -> None:
    raw = raw_map(SAMPLES[p.Heartbeat])
    raw["health"]["products"][0]["extra"] = True
    with pytest.raises(ProtocolError):
        p.decode(msgspec.msgpack.encode(raw), A2S)


@pytest.mark.parametrize(
    "payload", [msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode(5),
                msgspec.msgpack.encode("hello"), msgspec.msgpack.encode(None), b""],
)
def test_non_map_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode(payload, A2S)


def test_json_is_not_msgpack() -> None:
    with pytest.raises(ProtocolError, match=r"undecodable|invalid"):
        p.decode(msgspec.json.encode(SAMPLES[p.Ack]), S2A)


@pytest.mark.parametrize("frame", ["", '{"t": "ping"}', p.encode(SAMPLES[p.Ack]).decode("latin-1")])
def test_text_frames_are_refused(frame: str) -> None:
    with pytest.raises(ProtocolError, match="text frames") as info:
        p.decode(frame, S2A)
    assert not isinstance(info.value, MessageTooLarge)


# A message per channel with one string field set to the marker "Z", to corrupt its UTF-8.
UTF8_TARGETS: dict[str, tuple[Any, p.Message]] = {
    "Hello": (p.Hello, p.Hello(agent_id="Z", signature=b"s", agent_version="1")),
    "AgentToServer": (p.AgentToServer, p.Event(seq=1, kind="Z", at=0.0)),
    "ServerToAgent": (p.ServerToAgent, p.Command(id=1, action=p.RestartProduct(product="Z"))),
    "Request": (p.Request, p.Request(id=1, method="Z")),
}


def utf8_corruptions(channel: str) -> dict[str, bytes]:
    _, message = UTF8_TARGETS[channel]
    encoded = p.encode(message)
    tag = msgspec.msgpack.encode(type(message).__struct_config__.tag)
    assert encoded.count(b"\xa1Z") == 1
    return {
        "value": encoded.replace(b"\xa1Z", b"\xa1\x80"),
        "key": b"\x82\xa1t" + tag + b"\xa1\x80\xc0",
        "tag": b"\x81\xa1t\xa1\x80",
    }


@pytest.mark.parametrize("where", ["value", "key", "tag"])
@pytest.mark.parametrize("channel", sorted(UTF8_TARGETS))
def test_invalid_utf8_is_a_protocol_error(where: str, channel: str) -> None:
    # Hello is what the coordinator decodes from a not-yet-authenticated peer.
    expected, _ = UTF8_TARGETS[channel]
    with pytest.raises(ProtocolError):
        p.decode(utf8_corruptions(channel)[where], expected)


def test_utf8_corruption_payloads_are_otherwise_valid() -> None:
    # Guards the test above: without the corruption each target decodes fine.
    for expected, message in UTF8_TARGETS.values():
        assert p.decode(p.encode(message), expected) == message


def test_deeply_nested_payload_is_a_protocol_error() -> None:
    header = msgspec.msgpack.encode({"t": "event", "seq": 1, "kind": "k", "at": 1.0})
    # Same map with one more entry: "data": {"x": [[[[...]]]]} nested 5,000 deep (~5 KB).
    body = bytes([header[0] + 1]) + header[1:] + msgspec.msgpack.encode("data")
    body += b"\x81\xa1x" + b"\x91" * 5000 + b"\xc0"
    assert len(body) < p.MAX_MESSAGE_BYTES
    with pytest.raises(ProtocolError):
        p.decode(body, A2S)


# ----------------------------------------------------------------------------- size limits
def test_size_limit_is_inclusive_and_checked_before_parsing() -> None:
    encoded = p.encode(SAMPLES[p.Event])
    assert p.decode(encoded, A2S, limit=len(encoded)) == SAMPLES[p.Event]
    with pytest.raises(MessageTooLarge, match=f"{len(encoded)} bytes"):
        p.decode(encoded, A2S, limit=len(encoded) - 1)
    # Garbage that is too large is refused for its size, not its content.
    with pytest.raises(MessageTooLarge):
        p.decode(b"\xff" * 11, A2S, limit=10)


def test_oversized_event_is_too_large_on_the_agent_channel() -> None:
    big = p.Event(seq=1, kind="log", at=0.0, data={"blob": "x" * p.MAX_MESSAGE_BYTES})
    encoded = p.encode(big)
    with pytest.raises(MessageTooLarge) as info:
        p.decode(encoded, A2S)
    assert isinstance(info.value, ProtocolError)  # handlers catching ProtocolError see it too


def test_admin_limit_admits_what_the_agent_limit_refuses() -> None:
    request = p.Request(id=1, method="bundle.upload", params={"data": b"z" * (2 << 20)})
    encoded = p.encode(request)
    assert p.MAX_MESSAGE_BYTES < len(encoded) <= p.MAX_ADMIN_MESSAGE_BYTES
    with pytest.raises(MessageTooLarge):
        p.decode(encoded, p.Request)
    assert p.decode(encoded, p.Request, limit=p.MAX_ADMIN_MESSAGE_BYTES) == request


def test_a_full_package_chunk_fits_the_message_limit() -> None:
    chunk = p.Chunk(job="j" * 200, offset=2**62, data=b"\xff" * p.CHUNK_BYTES, error="e" * 300)
    assert len(p.encode(chunk)) < p.MAX_MESSAGE_BYTES
    assert p.decode(p.encode(chunk), S2A) == chunk


def test_close_codes_are_application_codes_and_fatal_set_is_right() -> None:
    codes = [v for k, v in vars(p.CloseCode).items() if k.isupper() and isinstance(v, int)]
    assert all(4000 <= c <= 4999 for c in codes)
    assert len(codes) == len(set(codes))
    assert p.CloseCode.REPLACED not in p.CloseCode.FATAL
    assert {p.CloseCode.REVOKED, p.CloseCode.UNAUTHENTICATED} <= p.CloseCode.FATAL


# ----------------------------------------------------------------------------- hostile values
# An authenticated agent may still be hostile (a virus-infected PC): whatever it sends is
# bounded at decode, so storage never sees a value one backend accepts and another refuses.
def _health_raw() -> dict[str, Any]:
    return raw_map(SAMPLES[p.Heartbeat])["health"]


HOSTILE_HEALTH: list[tuple[str, Any]] = [
    ("cpu_percent", float("nan")),
    ("cpu_percent", float("inf")),
    ("cpu_percent", -1.0),
    ("memory_percent", 1e9),
    ("uptime", float("-inf")),
    ("boot_time", -5.0),
    ("boot_time", 1e300),
    ("memory_total", -1),
    ("memory_used", 2**64 - 1),
    ("os", "x" * 256),
    ("os", "Linux\x00"),
    ("agent_version", "v" * 101),
    ("problems", [{"kind": "disk_full", "subject": f"/d{i}", "detail": ""}
                  for i in range(p.MAX_PROBLEMS + 1)]),
    ("disks", [{"mount": "/", "total": 1, "used": 1, "percent": 1.0}] * (p.MAX_DISKS + 1)),
    ("products", [{"name": "a", "version": None, "running": True}] * (p.MAX_PRODUCTS + 1)),
    ("problems", [{"kind": "k" * 101, "subject": "/", "detail": ""}]),
    ("problems", [{"kind": "disk_full", "subject": "/", "detail": "d" * 2001}]),
    ("problems", [{"kind": "disk_full", "subject": "\x00", "detail": ""}]),
    ("disks", [{"mount": "/", "total": 1, "used": 1, "percent": float("nan")}]),
    ("products", [{"name": "a", "version": None, "running": True, "pid": -3}]),
]


@pytest.mark.parametrize(("field", "bad"), HOSTILE_HEALTH,
                         ids=[f"{f}-{i}" for i, (f, _) in enumerate(HOSTILE_HEALTH)])
def test_hostile_health_values_are_refused(field: str, bad: Any) -> None:
    health = _health_raw()
    health[field] = bad
    raw = {"t": "heartbeat", "health": health}
    with pytest.raises(ProtocolError, match="invalid message"):
        p.decode(msgspec.msgpack.encode(raw), A2S)


HOSTILE_EVENTS: list[dict[str, Any]] = [
    {"seq": -1}, {"seq": 2**64 - 1}, {"at": float("nan")}, {"at": 1e300}, {"at": -1.0},
    {"kind": "k" * 101}, {"kind": "boot\x00"},
    {"data": {"x": float("nan")}}, {"data": {"x": [1, [float("inf")]]}},
    {"data": {"x": b"bytes are not JSON"}}, {"data": {"nul\x00key": 1}},
    {"data": {"x": "nul\x00value"}}, {"data": {"deep": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}},
    {"data": {"many": list(range(p.MAX_DATA_ITEMS + 1))}},
]


@pytest.mark.parametrize("change", HOSTILE_EVENTS, ids=[str(i) for i in range(len(HOSTILE_EVENTS))])
def test_hostile_event_values_are_refused(change: dict[str, Any]) -> None:
    raw = {**raw_map(SAMPLES[p.Event]), **change}
    with pytest.raises(ProtocolError, match="invalid message"):
        p.decode(msgspec.msgpack.encode(raw), A2S)


@pytest.mark.parametrize("change", [{"data": {"x": float("nan")}}, {"error": "e" * 2001},
                                    {"data": {"blob": b"\x00"}}, {"id": 2**64 - 1}])
def test_hostile_command_results_are_refused(change: dict[str, Any]) -> None:
    raw = {**raw_map(SAMPLES[p.CommandResult]), **change}
    with pytest.raises(ProtocolError, match="invalid message"):
        p.decode(msgspec.msgpack.encode(raw), A2S)


@pytest.mark.parametrize("change", [{"hostname": "h" * 256}, {"hostname": "pc\x00"},
                                    {"products": ["p"] * (p.MAX_PRODUCTS + 1)},
                                    {"public_key": b"k" * 65}, {"token": "t" * 101}])
def test_hostile_enroll_requests_are_refused(change: dict[str, Any]) -> None:
    raw = {**raw_map(SAMPLES[p.EnrollRequest]), **change}
    with pytest.raises(ProtocolError, match="invalid message"):
        p.decode(msgspec.msgpack.encode(raw), p.EnrollToServer)


wild_floats = st.floats(allow_nan=True, allow_infinity=True)
wild_text = st.text(max_size=300)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(cpu=wild_floats, boot=wild_floats, uptime=wild_floats, os_=wild_text,
       total=st.integers(min_value=-(2**63), max_value=2**64 - 1),
       problems=st.integers(min_value=0, max_value=40))
def test_any_decoded_health_is_storable(cpu: float, boot: float, uptime: float, os_: str,
                                        total: int, problems: int) -> None:
    """Fuzz: a heartbeat either decodes to values every backend stores, or is refused."""
    health = _health_raw()
    health.update(cpu_percent=cpu, boot_time=boot, uptime=uptime, os=os_, memory_total=total,
                  problems=[{"kind": "disk_full", "subject": str(i), "detail": ""}
                            for i in range(problems)])
    try:
        raw = msgspec.msgpack.encode({"t": "heartbeat", "health": health})
    except UnicodeEncodeError:
        return
    try:
        decoded = p.decode(raw, A2S)
    except ProtocolError:
        return
    h = decoded.health
    assert all(math.isfinite(x) for x in (h.cpu_percent, h.boot_time, h.uptime))
    assert 0 <= h.memory_total < 2**63
    assert len(h.os) <= 255
    assert "\x00" not in h.os
    assert len(h.problems) <= p.MAX_PROBLEMS
    p.check_data(p.to_builtins(h))  # plain JSON through and through


@given(value=json_value)
def test_check_data_accepts_every_json_value(value: Any) -> None:
    p.check_data({"v": value})


@given(value=any_value)
def test_check_data_refuses_only_with_value_error(value: Any) -> None:
    """Whatever check_data lets through is strict JSON without NUL."""
    try:
        p.check_data({"v": value})
    except ValueError:
        return
    assert "\\u0000" not in json.dumps(value, allow_nan=False)


def test_slow_down_reason_round_trips() -> None:
    reason = p.slow_down_reason("too many events", 30)
    assert p.retry_after_of(reason) == 30
    assert len(reason.encode()) <= 123
    assert p.retry_after_of("no heartbeat; marked offline") is None
