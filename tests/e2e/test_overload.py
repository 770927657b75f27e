"""A coordinator whose event loop runs late refuses new TLS handshakes at the ClientHello
(quotas.Overload), and takes them again once it has caught up: a real process, frozen
with SIGSTOP while a client waits in its accept queue, then let go."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time

from careline.shared.tls import pinned_client_context
from tests.conftest import wait_until


def tls_handshake(coordinator, timeout: float = 10.0) -> BaseException | None:
    """Connect and complete a TLS handshake with the pinned CA; the error, if any."""
    context = pinned_client_context((coordinator.data / "pki" / "ca.pem").read_text())
    try:
        with socket.create_connection(("127.0.0.1", coordinator.port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1"):
            return None
    except (OSError, ssl.SSLError) as exc:
        return exc


def test_a_late_event_loop_refuses_handshakes_before_computing_them(sqlite_coordinator):
    coord = sqlite_coordinator
    assert tls_handshake(coord) is None
    assert coord.proc is not None
    outcome: list[BaseException | None] = []
    waiting = threading.Thread(target=lambda: outcome.append(tls_handshake(coord)))
    coord.proc.send_signal(signal.SIGSTOP)
    try:
        waiting.start()  # its ClientHello waits in the frozen process's accept queue
        time.sleep(1.5)
    finally:
        coord.proc.send_signal(signal.SIGCONT)
    waiting.join(15)
    assert len(outcome) == 1
    assert isinstance(outcome[0], (ConnectionError, ssl.SSLError)), outcome

    # Caught up within a few samples: handshakes are taken again, and the log says both.
    wait_until(lambda: tls_handshake(coord) is None, timeout=10)
    log = coord.log.read_text()
    assert "late: refusing new TLS handshakes" in log
    wait_until(lambda: "caught up: refused" in coord.log.read_text())


def test_a_prompt_coordinator_refuses_nothing(sqlite_coordinator):
    coord = sqlite_coordinator
    for _ in range(20):
        assert tls_handshake(coord) is None
    assert "refusing new TLS handshakes" not in coord.log.read_text()


def test_a_technician_refused_while_it_catches_up_gets_in_on_a_retry(sqlite_coordinator):
    coord = sqlite_coordinator
    assert coord.proc is not None
    answered: list[object] = []
    cli = threading.Thread(target=lambda: answered.append(coord.cli("agents", "list")))
    coord.proc.send_signal(signal.SIGSTOP)
    try:
        cli.start()  # its handshake waits in the accept queue, to be refused at first
        time.sleep(1.5)
    finally:
        coord.proc.send_signal(signal.SIGCONT)
    cli.join(30)
    assert answered == [[]]  # no agents: the command ran, after the refusal
    wait_until(lambda: "caught up: refused 1 TLS handshake" in coord.log.read_text())
