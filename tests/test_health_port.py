"""The load balancer's health endpoint (coordinator/health_port.py): what it answers, and
that a real `careline serve --health-listen` answers it while serving."""

from __future__ import annotations

import socket

import pytest

from careline.coordinator.health_port import health_response
from tests.conftest import CoordinatorProcess, free_port, wait_for_port


@pytest.mark.parametrize(("line", "serving", "status"), [
    (b"GET /health HTTP/1.0", True, b"200 OK"),
    (b"HEAD /health HTTP/1.1", True, b"200 OK"),
    (b"GET /health HTTP/1.0", False, b"503 Service Unavailable"),
    (b"GET / HTTP/1.0", True, b"404 Not Found"),
    (b"POST /health HTTP/1.0", True, b"404 Not Found"),
    (b"GET /health", True, b"404 Not Found"),
    (b"\x00\xff garbage", True, b"404 Not Found"),
])
def test_answers(line, serving, status):
    answer = health_response(line, serving)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 " + status + b"\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    if line.startswith(b"HEAD"):
        assert body == b""
    elif status == b"200 OK":
        assert body == b"ok\n"
    else:
        assert body  # says why


def ask(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_serving_coordinator_answers_on_its_health_port(tmp_path):
    coordinator = CoordinatorProcess(tmp_path)
    port = free_port()
    coordinator.start("--health-listen", f"127.0.0.1:{port}")
    try:
        assert coordinator.proc is not None
        wait_for_port(port, coordinator.proc)
        assert ask(port, b"GET /health HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 OK\r\n")
        assert ask(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
        # A request past the size limit, or one never finished, gets no answer but a close.
        assert ask(port, b"GET /health HTTP/1.0\r\nX: " + b"a" * 5000 + b"\r\n\r\n") == b""
    finally:
        coordinator.stop()
