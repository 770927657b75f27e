"""The technician CLI's connection to a running coordinator (sync: one request at a time)."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from careline.shared import protocol as p
from careline.shared.errors import AuthError, ConfigError, RemoteError


@dataclass(frozen=True)
class Credentials:
    server_url: str
    token: str
    ca_pem: str


def resolve_credentials(
    server: str | None, token: str | None, ca: str | None, data: str | None
) -> Credentials:
    """--server/--token/--ca (or CARELINE_SERVER/_TOKEN/_CA), else the local data dir."""
    server = server or os.environ.get("CARELINE_SERVER")
    token = token or os.environ.get("CARELINE_TOKEN")
    ca = ca or os.environ.get("CARELINE_CA")
    local = None
    if not (server and token and ca):
        from careline.coordinator.datadir import DataDir, resolve

        candidate = DataDir(resolve(data))
        if candidate.exists():
            local = candidate
    if local is not None:
        settings = local.settings()
        host, port = settings.listen_host_port()
        server = server or settings.public_url or f"wss://{host}:{port}"
        if not token and local.local_token_file.exists():
            token = local.local_token_file.read_text().strip()
        ca = ca or str(local.ca_file)
    if not server:
        raise ConfigError("no coordinator: pass --server wss://HOST:PORT or set CARELINE_SERVER")
    if not token:
        raise ConfigError("no technician token: pass --token or set CARELINE_TOKEN")
    if not ca:
        raise ConfigError("no CA to pin: pass --ca FILE (the coordinator's pki/ca.pem)")
    try:
        ca_pem = Path(ca).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read CA file {ca}: {exc.strerror}") from None
    return Credentials(server.rstrip("/"), token, ca_pem)


# A client waiting on a method with a server-side timeout (a live command) allows this much
# on top of it, for the network and for storing the answer, before it gives up itself.
REPLY_MARGIN = 10.0


def reply_timeout(default: float, server_wait: float | None) -> float:
    """How long to wait for each reply: the default, or as long as the server may take."""
    return default if server_wait is None else max(default, server_wait + REPLY_MARGIN)


# A coordinator too busy to start a TLS handshake drops it (server.Overload); the CLI tries
# again after this, doubling up to BUSY_RETRY_MAX, within its open timeout.
BUSY_RETRY_FIRST, BUSY_RETRY_MAX = 0.1, 2.0


class AdminClient:
    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect

        from careline.shared.tls import pinned_client_context, refused_while_busy

        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        deadline, pause, refused = time.monotonic() + timeout, BUSY_RETRY_FIRST, 0
        while True:
            try:
                self._ws = self._stack.enter_context(connect(
                    credentials.server_url + p.ADMIN_PATH,
                    ssl=pinned_client_context(credentials.ca_pem),
                    additional_headers={"Authorization": f"Bearer {credentials.token}"},
                    max_size=p.MAX_ADMIN_MESSAGE_BYTES, compression=None,
                    open_timeout=max(deadline - time.monotonic(), 0.1), close_timeout=2,
                ))
                break
            except InvalidStatus as exc:
                raise AuthError(
                    f"coordinator refused the connection: {exc.response.status_code}") from None
            except (OSError, InvalidHandshake) as exc:
                if refused_while_busy(exc) and time.monotonic() + pause < deadline:
                    refused += 1
                    time.sleep(pause)
                    pause = min(pause * 2, BUSY_RETRY_MAX)
                    continue
                busy = f" (busy: refused {refused} time(s) before)" if refused else ""
                raise ConfigError(
                    f"cannot reach the coordinator at {credentials.server_url}: {exc}{busy}"
                ) from None
        self.timeout = timeout

    def stream(self, method: str, *, wait: float | None = None, **params: Any) -> Iterator[Any]:
        """Yield partial results as they arrive, then the final result. `wait` is how long
        the server itself may take (a live command's timeout): the client waits that long."""
        parts: list[Any] = []
        for reply in self._replies(method, wait, params):
            if reply.part:  # a slice of one long list: joined, yielded once whole
                parts.extend(reply.result)
                if reply.final:
                    yield parts
            elif reply.many:  # partials sent together
                yield from reply.result
            else:
                yield reply.result

    def _replies(self, method: str, wait: float | None, params: dict[str, Any]) -> Iterator[p.Reply]:
        from websockets.exceptions import ConnectionClosed

        timeout = reply_timeout(self.timeout, wait)
        request_id = next(self._ids)
        params = {k: v for k, v in params.items() if v is not None}
        try:
            self._ws.send(p.encode(p.Request(id=request_id, method=method, params=params)))
            while True:
                reply = p.decode(
                    self._ws.recv(timeout=timeout), p.Reply, limit=p.MAX_ADMIN_MESSAGE_BYTES
                )
                if reply.id != request_id:
                    continue
                if not reply.ok:
                    raise RemoteError(reply.error_code, reply.error)
                yield reply
                if reply.final:
                    return
        except ConnectionClosed as exc:
            reason = exc.rcvd.reason if exc.rcvd else "connection lost"
            raise AuthError(f"coordinator closed the connection: {reason}") from None
        except TimeoutError:
            raise RemoteError("timeout", f"no answer from the coordinator in {timeout:.0f}s") from None

    def call(self, method: str, *, wait: float | None = None, **params: Any) -> Any:
        *_, result = self.stream(method, wait=wait, **params)
        return result

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
