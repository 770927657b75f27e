"""agent.probes: a real machine's heartbeat always fits the coordinator's bounds, so a PC
with many products or long problem details is never refused (and never shown offline)."""

from __future__ import annotations

from pathlib import Path

from careline.agent.probes import Prober
from careline.agent.state import AgentConfig, ProductConfig
from careline.shared import protocol as p


def test_heartbeat_of_a_crowded_machine_fits_the_bounds(tmp_path: Path) -> None:
    products = [ProductConfig(name=f"{'P' * 300}{i}", install_dir=str(tmp_path / f"missing{i}"),
                              expect_running=True) for i in range(p.MAX_PRODUCTS + 10)]
    prober = Prober(AgentConfig(agent_id="ag-x", customer_id=1, server_url="wss://x",
                                products=products))
    health = prober.check()
    assert len(health.problems) == p.MAX_PROBLEMS < len(products)
    assert len(health.products) <= p.MAX_PRODUCTS
    decoded = p.decode(p.encode(p.Heartbeat(health=health)), p.AgentToServer)
    assert isinstance(decoded, p.Heartbeat)
    assert all(len(pr.subject) <= p.NAME for pr in decoded.health.problems)
