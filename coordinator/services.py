"""What the technicians' API methods and the web console work with, handed to them
explicitly: the coordinator's services, never the coordinator itself (server.py builds
this once and is the only module that knows how)."""

from __future__ import annotations

from dataclasses import dataclass

from careline.coordinator.datadir import DataDir, Settings
from careline.coordinator.hub import AgentHub
from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.notify.sender import Notifier
from careline.coordinator.policy.overrides import PolicyLayers
from careline.coordinator.rollouts import Rollouts
from careline.coordinator.storage.db import Database
from careline.coordinator.technicians import Technicians
from careline.coordinator.updates import UpdateService


@dataclass(frozen=True)
class Services:
    db: Database
    datadir: DataDir
    settings: Settings
    public_url: str  # what join strings tell agents to connect to
    ca_fingerprint: str
    hub: AgentHub
    desk: IncidentDesk
    policy_layers: PolicyLayers
    updates: UpdateService
    rollouts: Rollouts
    notifier: Notifier
    technicians: Technicians
