"""Delivery over one channel: e-mail (SMTP), a signed webhook, or a chat service via apprise.

E-mail goes through the standard library's smtplib (in a thread): it needs no dependency,
speaks STARTTLS, implicit TLS and AUTH, and lets us set the Message-ID that carries the
idempotency key, which apprise's mailto:// does not. Webhooks are one JSON POST signed with
HMAC-SHA256 over "<timestamp>.<body>" (coordinator.notify.policy.sign_webhook). Everything
else (Telegram, Slack, Teams, Discord, Zalo, ...) is an apprise URL: a well-kept library
instead of hand-written clients.

Secrets (SMTP password, webhook secret, apprise URL with its token) are stored in the
database encrypted with a Fernet key kept in the data dir (`notify.key`, mode 0600), so a
database dump or backup alone reveals none of them; they are never sent back to the CLI.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from careline.coordinator.notify import policy
from careline.shared.errors import CarelineError, ConfigError

KINDS = ("email", "webhook", "apprise")
SECURITY = ("starttls", "tls", "none")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


class DeliveryError(CarelineError):
    """A channel refused or could not take a message; it will be retried."""

    code = "delivery"


@dataclass(frozen=True)
class Attachment:
    """A file sent with an e-mail (the care report's PDF); other channels carry no files."""

    filename: str
    content_type: str  # e.g. "application/pdf"
    data: bytes


@dataclass(frozen=True)
class Message:
    delivery: str  # idempotency key: the same for every retry of this message
    address: str  # the recipient's address on this channel (e-mail; unused by webhooks)
    subject: str
    text: str
    payload: dict[str, Any]  # the webhook's JSON body
    attachments: tuple[Attachment, ...] = ()


class Secrets:
    """Channel secrets encrypted with a key that lives outside the database."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._fernet: Any = None

    def _cipher(self) -> Any:
        if self._fernet is None:
            from cryptography.fernet import Fernet

            if not self.key_file.exists():
                # Written aside, then linked into place: coordinator processes sharing the
                # data dir that start together agree on one key, and none reads half of one.
                spare = self.key_file.with_name(f".{self.key_file.name}.{os.getpid()}")
                fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key())
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(spare, self.key_file)
                except FileExistsError:
                    pass
                finally:
                    spare.unlink()
            self._fernet = Fernet(self.key_file.read_bytes().strip())
        return self._fernet

    def encrypt(self, secret: str) -> str:
        return "" if not secret else str(self._cipher().encrypt(secret.encode()).decode())

    def decrypt(self, token: str) -> str:
        if not token:
            return ""
        from cryptography.fernet import InvalidToken

        try:
            return str(self._cipher().decrypt(token.encode()).decode())
        except InvalidToken:
            raise ConfigError(f"channel secret cannot be decrypted with {self.key_file}") from None


def check_config(kind: str, config: dict[str, Any], secret: str) -> dict[str, Any]:
    """The channel's stored (non-secret) settings, validated; ConfigError names the problem."""
    if kind == "email":
        security = config.get("security") or "starttls"
        if security not in SECURITY:
            raise ConfigError(f"--security must be one of {', '.join(SECURITY)}")
        if not config.get("host"):
            raise ConfigError("an e-mail channel needs --host")
        if not config.get("from_addr") or "@" not in config["from_addr"]:
            raise ConfigError("an e-mail channel needs --from (an e-mail address)")
        if secret and not config.get("username"):
            raise ConfigError("a password needs --username")
        return {"host": config["host"], "port": int(config.get("port") or DEFAULT_PORTS[security]),
                "security": security, "username": config.get("username") or "",
                "from_addr": config["from_addr"], "ca_file": config.get("ca_file") or "",
                "timeout": float(config.get("timeout") or 20)}
    if kind == "webhook":
        url = config.get("url") or ""
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise ConfigError("a webhook channel needs --url http(s)://...")
        if not secret:
            raise ConfigError("a webhook channel needs a signing secret")
        return {"url": url, "timeout": float(config.get("timeout") or 20)}
    if kind == "apprise":
        import apprise

        if not secret or apprise.Apprise.instantiate(secret) is None:
            raise ConfigError("an apprise channel needs --url with a URL apprise understands "
                              "(e.g. tgram://TOKEN/CHAT, zalo://TOKEN/CHAT, slack://...)")
        return {"service": secret.split("://", 1)[0]}
    raise ConfigError(f"unknown channel kind {kind!r}; one of {', '.join(KINDS)}")


async def deliver(kind: str, config: dict[str, Any], secret: str, message: Message) -> None:
    """Send one message; DeliveryError if the channel did not take it."""
    error = (await deliver_many(kind, config, secret, [message]))[0]
    if error is not None:
        raise DeliveryError(error)


async def deliver_many(kind: str, config: dict[str, Any], secret: str,
                       messages: Sequence[Message], parallel: int = 8) -> list[str | None]:
    """Send messages over one channel: None for each one taken, else why not. E-mails share
    one SMTP session; webhooks and chat messages go `parallel` at a time."""
    if kind == "email":
        return await asyncio.to_thread(_send_emails, config, secret, messages)
    if kind not in ("webhook", "apprise"):
        return [f"unknown channel kind {kind!r}"] * len(messages)
    slots = asyncio.Semaphore(parallel)

    async def one(message: Message) -> str | None:
        async with slots:
            try:
                if kind == "webhook":
                    await asyncio.to_thread(_post_webhook, config, secret, message)
                else:
                    await _send_apprise(secret, message)
            except DeliveryError as exc:
                return str(exc)
            except Exception as exc:  # network errors, and whatever a chat plugin raises
                return f"{type(exc).__name__}: {exc}"[:500]
            return None

    return list(await asyncio.gather(*(one(m) for m in messages)))


@functools.cache
def _tls_context(ca_file: str) -> ssl.SSLContext:
    """Verifying context (system CAs, or the channel's own CA file); loading CAs is slow, so
    it is made once."""
    return ssl.create_default_context(cafile=ca_file or None)


def _email(config: dict[str, Any], message: Message) -> MIMEText | MIMEMultipart:
    # email.mime (compat32) rather than EmailMessage: the same mail in a seventh of the CPU,
    # which the coordinator's event loop needs for heartbeats (bench/notify.py).
    mail: MIMEText | MIMEMultipart = MIMEText(message.text, "plain", "utf-8")
    if message.attachments:
        mail = MIMEMultipart("mixed")
        mail.attach(MIMEText(message.text, "plain", "utf-8"))
        for attachment in message.attachments:
            part = MIMEApplication(attachment.data, attachment.content_type.split("/", 1)[1])
            part.add_header("Content-Disposition", "attachment", filename=attachment.filename)
            mail.attach(part)
    mail["From"] = config["from_addr"]
    mail["To"] = message.address
    mail["Subject"] = Header(message.subject, "utf-8")  # type: ignore[assignment]
    mail["Date"] = formatdate(localtime=False)
    domain = config["from_addr"].rsplit("@", 1)[1]
    # The receiver (and any mail system on the way) sees a retry as the same message.
    mail["Message-ID"] = f"<careline-{message.delivery}@{domain}>"
    mail[policy.DELIVERY_HEADER] = message.delivery
    return mail


def _send_emails(config: dict[str, Any], password: str, messages: Sequence[Message]) -> list[str | None]:
    results: list[str | None] = []
    security, timeout = config["security"], config["timeout"]
    try:
        client: smtplib.SMTP
        if security == "tls":
            client = smtplib.SMTP_SSL(config["host"], config["port"], timeout=timeout,
                                      context=_tls_context(config.get("ca_file") or ""))
        else:
            client = smtplib.SMTP(config["host"], config["port"], timeout=timeout)
        with client:
            if security == "starttls":
                client.starttls(context=_tls_context(config.get("ca_file") or ""))
            if config.get("username"):
                client.login(config["username"], password)
            for message in messages:
                try:
                    refused = client.send_message(_email(config, message))
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError,
                        smtplib.SMTPSenderRefused) as exc:
                    results.append(f"{type(exc).__name__}: {exc}"[:500])
                    client.rset()
                    continue
                results.append(f"refused recipients: {sorted(refused)}" if refused else None)
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        results += [error] * (len(messages) - len(results))
    return results


def webhook_request(config: dict[str, Any], secret: str, message: Message,
                    now: float | None = None) -> urllib.request.Request:
    body = json.dumps(message.payload, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = int(now if now is not None else time.time())
    return urllib.request.Request(config["url"], data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "careline-notify",
        policy.DELIVERY_HEADER: message.delivery,
        policy.TIMESTAMP_HEADER: str(timestamp),
        policy.SIGNATURE_HEADER: policy.sign_webhook(secret.encode(), timestamp, body),
    })


def _post_webhook(config: dict[str, Any], secret: str, message: Message) -> None:
    try:
        with urllib.request.urlopen(webhook_request(config, secret, message),
                                    timeout=config["timeout"]) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"webhook answered HTTP {exc.code}") from None


async def _send_apprise(url: str, message: Message) -> None:
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        raise DeliveryError("apprise does not understand the channel URL")
    if not await sender.async_notify(body=message.text, title=message.subject):
        raise DeliveryError("apprise could not deliver (see the coordinator log)")
