"""The product tree is hashed once per verify schedule (issue 13, item 10): the heartbeat's
check and the updater's periodic report share one result."""

from __future__ import annotations

from pathlib import Path

from careline.agent.probes import Prober
from careline.agent.state import AgentConfig, ProductConfig
from careline.shared.manifest import MANIFEST_NAME, build_manifest, encode_manifest


def test_check_and_periodic_report_share_one_hashing(tmp_path: Path) -> None:
    install = tmp_path / "Acct"
    install.mkdir()
    (install / "acct.exe").write_text("v1")
    (install / MANIFEST_NAME).write_bytes(
        encode_manifest(build_manifest(install, product="Acct", version="1.0")))
    config = AgentConfig(agent_id="ag-x", customer_id=1, server_url="wss://x",
                         heartbeat_interval=30, verify_interval=3600,
                         products=[ProductConfig(name="Acct", install_dir=str(install))])
    prober = Prober(config)
    prober.check()
    first = prober._last_verify
    (install / "acct.exe").write_text("tampered")
    assert prober.integrity() == {"Acct": []}  # within the schedule: not hashed again
    assert prober._last_verify == first
    assert prober.verify_now()["Acct"]  # an explicit verification does hash
