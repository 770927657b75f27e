"""`careline pki renew` (issue 13, item 11): a new server certificate under the same CA;
the enrolled agent comes back after the restart without being enrolled again."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from tests.conftest import wait_until


def test_renewed_certificate_keeps_agents(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string())
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")
    pki = coord.data / "pki"
    old_cert, ca = (pki / "server.pem").read_bytes(), (pki / "ca.pem").read_bytes()
    old_san = x509.load_pem_x509_certificate(old_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value

    result = coord.cli("pki", "renew")
    new = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    assert (pki / "server.pem").read_bytes() != old_cert
    assert (pki / "ca.pem").read_bytes() == ca
    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == old_san
    days = (new.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    assert 820 <= days <= 825
    assert result["expires"].startswith(str(new.not_valid_after_utc.date()))

    coord.stop()
    coord.start()
    wait_until(lambda: agent.status()["connection"]["state"] == "connected", timeout=40)
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")
