"""The tests' free_port (tests/conftest.py): each pytest-xdist worker hands out ports from
its own slice below the kernel's range for outgoing connections, never the same one twice
in a row; bound to port 0, two workers were once given the same port and a coordinator
failed to start with "address already in use"."""

from __future__ import annotations

import socket
import sys

from tests import conftest
from tests.conftest import PORT_SPAN, ephemeral_low, free_port, worker_ports


def test_workers_slices_do_not_overlap_and_stay_below_the_ephemeral_range() -> None:
    low = 32768
    slices = [worker_ports(f"gw{i}", 3, low) for i in range(3)]
    assert all(len(s) == PORT_SPAN // 3 for s in slices)
    assert not set(slices[0]) & set(slices[1])
    assert not set(slices[1]) & set(slices[2])
    assert min(slices[0]) >= low - PORT_SPAN
    assert max(slices[2]) < low
    assert worker_ports("", 1, low) == range(low - PORT_SPAN, low)  # no xdist: the whole span


def test_ports_come_from_this_workers_slice_and_differ_call_to_call() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(port < ephemeral_low() for port in ports)
    for port in ports:  # and each is free
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_one_counter_for_the_whole_worker() -> None:
    """Fixtures and test modules import the same conftest module: one sequence of ports."""
    assert sys.modules["tests.conftest"] is conftest
    assert free_port is conftest.free_port
