"""Real receivers for notification tests: an SMTP server (aiosmtpd) and an HTTP server that
verifies webhook signatures the way a vendor's receiver would."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from careline.coordinator.notify import policy
from tests.conftest import free_port


class Mailbox:
    """An SMTP server on 127.0.0.1 keeping every message it accepts."""

    def __init__(self, **controller_args: Any) -> None:
        self.messages: list[EmailMessage] = []
        self.port = free_port()
        self.fail_with: str | None = None  # e.g. "451 try later": refuse every message
        self.refuse: set[str] = set()  # recipients answered "550 no such user"
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **controller_args)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if address in self.refuse:
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail_with:
            return self.fail_with
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(message)
        return "250 OK"

    def __enter__(self) -> Mailbox:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class WebhookReceiver:
    """Accepts POSTs whose HMAC signature and timestamp verify; rejects others with 401.
    Without a secret it accepts any JSON POST (an apprise json:// target)."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret.encode() if secret is not None else None
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.rejected = 0
        self.status = 200  # what to answer valid requests with (500: simulate an outage)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = receiver.secret is None or policy.verify_webhook(
                    receiver.secret, self.headers.get(policy.TIMESTAMP_HEADER, ""), body,
                    self.headers.get(policy.SIGNATURE_HEADER, ""), time.time())
                if not ok:
                    receiver.rejected += 1
                    self.send_response(401)
                elif receiver.status != 200:
                    self.send_response(receiver.status)
                else:
                    receiver.received.append(json.loads(body))
                    receiver.headers.append(dict(self.headers))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/careline"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
