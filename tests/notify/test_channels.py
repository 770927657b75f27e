"""coordinator.notify.channels against real servers: SMTP with STARTTLS + AUTH and implicit
TLS (aiosmtpd, certificates from our own PKI code), one SMTP session for a batch with a
refused recipient, apprise delivering to a local JSON endpoint, and encrypted secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from careline.coordinator.notify import channels
from careline.coordinator.pki import create_pki, server_context
from careline.shared.errors import ConfigError
from tests.conftest import wait_until
from tests.notify.receivers import Mailbox, WebhookReceiver


def message(n: int = 1, address: str = "lan@vendor.vn") -> channels.Message:
    return channels.Message(f"n{n}", address, f"Sự cố #{n}", "Phí: 500.000 ₫\n", {"n": n})


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"careline", b"s3cret")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    create_pki(tmp_path / "pki", ["127.0.0.1"])
    return tmp_path / "pki"


def smtp_config(port: int, security: str, ca: Path | None) -> dict[str, Any]:
    return channels.check_config("email", {
        "host": "127.0.0.1", "port": port, "security": security, "username": "careline",
        "from_addr": "careline@vendor.vn", "ca_file": str(ca) if ca else None}, "s3cret")


async def test_starttls_with_auth(pki: Path) -> None:
    with Mailbox(tls_context=server_context(pki), require_starttls=True, auth_required=True,
                 authenticator=authenticator) as mailbox:
        config = smtp_config(mailbox.port, "starttls", pki / "ca.pem")
        await channels.deliver("email", config, "s3cret", message())
        assert len(mailbox.messages) == 1
        mail = mailbox.messages[0]
        assert mail["Subject"] == "Sự cố #1"
        assert "500.000 ₫" in mail.get_content()
        assert mail["Message-ID"] == "<careline-n1@vendor.vn>"

        with pytest.raises(channels.DeliveryError, match="SMTPAuthenticationError"):
            await channels.deliver("email", config, "wrong", message(2))
        # A server whose certificate we cannot verify gets nothing, password included.
        untrusted = smtp_config(mailbox.port, "starttls", None)
        with pytest.raises(channels.DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            await channels.deliver("email", untrusted, "s3cret", message(3))
        assert len(mailbox.messages) == 1


async def test_implicit_tls(pki: Path) -> None:
    with Mailbox(ssl_context=server_context(pki), authenticator=authenticator,
                 auth_required=True, auth_require_tls=False) as mailbox:  # aiosmtpd: TLS is implicit
        await channels.deliver("email", smtp_config(mailbox.port, "tls", pki / "ca.pem"),
                               "s3cret", message())
        assert len(mailbox.messages) == 1


async def test_one_session_for_a_batch_and_a_refused_recipient_fails_alone() -> None:
    with Mailbox() as mailbox:
        mailbox.refuse.add("gone@vendor.vn")
        config = channels.check_config("email", {"host": "127.0.0.1", "port": mailbox.port,
                                                 "security": "none",
                                                 "from_addr": "careline@vendor.vn"}, "")
        results = await channels.deliver_many("email", config, "", [
            message(1), message(2, "gone@vendor.vn"), message(3)])
        assert results[0] is None
        assert results[2] is None
        assert results[1] is not None
        assert "SMTPRecipientsRefused" in results[1]
        assert [m["Message-ID"] for m in mailbox.messages] == [
            "<careline-n1@vendor.vn>", "<careline-n3@vendor.vn>"]
    # Nobody listening: every message of the batch fails, with the reason.
    down = await channels.deliver_many("email", config, "", [message(1), message(2)])
    assert all(error and "ConnectionRefusedError" in error for error in down)


async def test_apprise_delivers_to_a_json_endpoint() -> None:
    with WebhookReceiver(None) as endpoint:
        url = endpoint.url.replace("http://", "json://")
        assert channels.check_config("apprise", {}, url) == {"service": "json"}
        await channels.deliver("apprise", {}, url, message())
        wait_until(lambda: endpoint.received, timeout=5)
        assert endpoint.received[0]["title"] == "Sự cố #1"
        assert "500.000 ₫" in endpoint.received[0]["message"]
        endpoint.status = 500
        with pytest.raises(channels.DeliveryError, match="apprise could not deliver"):
            await channels.deliver("apprise", {}, url, message(2))


@pytest.mark.parametrize(("kind", "config", "secret", "error"), [
    ("email", {"from_addr": "a@b.vn"}, "", "needs --host"),
    ("email", {"host": "h", "from_addr": "nobody"}, "", "needs --from"),
    ("email", {"host": "h", "from_addr": "a@b.vn", "security": "ssl3"}, "", "--security"),
    ("email", {"host": "h", "from_addr": "a@b.vn"}, "pw", "needs --username"),
    ("webhook", {"url": "ftp://x"}, "s", "needs --url"),
    ("webhook", {"url": "https://x.vn/h"}, "", "signing secret"),
    ("apprise", {}, "nonsense", "apprise understands"),
    ("pigeon", {}, "", "unknown channel kind"),
])
def test_channel_config_is_checked(kind: str, config: dict[str, Any], secret: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        channels.check_config(kind, config, secret)


def test_secrets_are_encrypted_with_a_key_outside_the_database(tmp_path: Path) -> None:
    secrets = channels.Secrets(tmp_path / "notify.key")
    sealed = secrets.encrypt("tgram://123:ABC/456")
    assert "ABC" not in sealed
    assert secrets.decrypt(sealed) == "tgram://123:ABC/456"
    assert (tmp_path / "notify.key").stat().st_mode & 0o777 == 0o600
    assert secrets.encrypt("") == ""
    assert secrets.decrypt("") == ""
    other = channels.Secrets(tmp_path / "other.key")
    other.encrypt("x")  # makes a different key
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        other.decrypt(sealed)


async def test_long_vietnamese_subject_and_body_arrive_intact() -> None:
    subject = "Sự cố #12: ổ cứng hỏng trên máy KT-01 (Công ty TNHH Kế toán Minh Anh, chi nhánh Hà Nội)"
    text = "Phí: 500.000 ₫\nHạn xử lý: 17:30 1/12/26\n"
    with Mailbox() as mailbox:
        config = channels.check_config("email", {"host": "127.0.0.1", "port": mailbox.port,
                                                 "security": "none",
                                                 "from_addr": "careline@vendor.vn"}, "")
        await channels.deliver("email", config, "", channels.Message("n12", "lan@vendor.vn",
                                                                     subject, text, {}))
        mail = mailbox.messages[0]
        assert mail["Subject"] == subject
        assert mail.get_content().replace("\r\n", "\n") == text  # SMTP line ends are CRLF
        assert mail["X-Careline-Delivery"] == "n12"
