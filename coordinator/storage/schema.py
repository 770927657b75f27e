"""Table definitions used by queries. Migrations (coordinator/migrations) create them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timestamps are aware UTC in Python on both backends (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to storage; use UTC-aware datetimes")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


metadata = sa.MetaData()

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("workdays", sa.String(40)),
    sa.Column("opens", sa.String(5)),
    sa.Column("closes", sa.String(5)),
)

technicians = sa.Table(
    "technicians",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("language", sa.String(5)),  # the web console's, once chosen
)

enrollment_tokens = sa.Table(
    "enrollment_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("uses_allowed", sa.Integer, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("contract_id", sa.Integer, sa.ForeignKey("contracts.id")),
    sa.Column("site_id", sa.Integer, sa.ForeignKey("sites.id")),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("os", sa.String(100), nullable=False),
    sa.Column("agent_version", sa.String(40), nullable=False),
    sa.Column("enrolled_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("connected", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("last_seen", UTCDateTime),
    sa.Column("last_connected_at", UTCDateTime),
    sa.Column("health", sa.JSON),
    sa.Column("contract_id", sa.Integer, sa.ForeignKey("contracts.id")),
    sa.Column("site_id", sa.Integer, sa.ForeignKey("sites.id")),
    sa.Column("joined_contract_on", sa.Date),
    sa.Column("off_at", UTCDateTime),
    sa.Column("hw_uuid", sa.String(64)),
    sa.Column("hw_serial", sa.String(64)),
    sa.Column("hw_disk", sa.String(64)),
    sa.Column("hw_mac", sa.String(64)),
    sa.Column("key_id", sa.String(40), unique=True),
    sa.Column("key_changed_at", UTCDateTime),
    sa.Column("replaced_by", sa.String(40)),
    # Issue 11: when the coordinator's own job results last set the product versions in
    # `health`, and when an input of rollout targeting last changed for this machine.
    sa.Column("versions_at", UTCDateTime),
    sa.Column("targeting_changed_at", UTCDateTime),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    # An event re-sent after a lost acknowledgement is stored once.
    sa.UniqueConstraint("agent_id", "seq", name="uq_events_agent_seq"),
)

# Issue 15: a bounded history of each machine's health, one sample per agent every few
# minutes at most (the latest report alone lives in agents.health).
health_samples = sa.Table(
    "health_samples",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("cpu_percent", sa.Float, nullable=False),
    sa.Column("memory_percent", sa.Float, nullable=False),
    sa.Column("disk_free_percent", sa.Float),  # the fullest disk's; NULL: no disk reported
    sa.Column("disk_free", sa.BigInteger),  # bytes free on that disk
    sa.Column("problems", sa.JSON, nullable=False),  # [{"kind", "subject"}, ...]
    sa.Index("ix_health_samples_agent_at", "agent_id", "at"),
    sa.Index("ix_health_samples_at", "at"),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(60), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)

sites = sa.Table(
    "sites",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
)

contracts = sa.Table(
    "contracts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("signed_on", sa.Date, nullable=False),
    sa.Column("warranty_months", sa.Integer, nullable=False),
    sa.Column("machines", sa.Integer),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

maintenance_packages = sa.Table(
    "maintenance_packages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contract_id", sa.Integer, sa.ForeignKey("contracts.id"), nullable=False),
    sa.Column("start", sa.Date, nullable=False),
    sa.Column("end", sa.Date, nullable=False),
    sa.Column("tier", sa.String(40), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

conditions = sa.Table(
    "conditions",
    metadata,
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), primary_key=True),
    sa.Column("kind", sa.String(40), primary_key=True),
    sa.Column("subject", sa.String(255), primary_key=True),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("incident_id", sa.Integer),
)

incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("subject", sa.String(255), nullable=False, server_default=""),
    sa.Column("category", sa.String(20), nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("opened_by", sa.String(100), nullable=False),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime),
    sa.Column("signals", sa.Integer, nullable=False, server_default="1"),
    sa.Column("touched", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Column("resolution", sa.Text),
    sa.Column("waiting_on", sa.String(40)),
)

policy_overrides = sa.Table(
    "policy_overrides",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("target", sa.String(80), nullable=False),
    sa.Column("key", sa.String(120), nullable=False),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("set_by", sa.String(100), nullable=False),
    sa.Column("set_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("target", "key", name="uq_policy_overrides_target_key"),
)

distinct_machines = sa.Table(
    "distinct_machines",
    metadata,
    sa.Column("old_id", sa.String(40), sa.ForeignKey("agents.id"), primary_key=True),
    sa.Column("new_id", sa.String(40), sa.ForeignKey("agents.id"), primary_key=True),
    sa.Column("decided_by", sa.String(100), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
)

customer_closures = sa.Table(
    "customer_closures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("first_day", sa.Date, nullable=False),
    sa.Column("last_day", sa.Date, nullable=False),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

incident_waits = sa.Table(
    "incident_waits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
    sa.Column("on_whom", sa.String(40), nullable=False),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("started_by", sa.String(100), nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("ended_by", sa.String(100)),
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("covered", sa.Boolean, nullable=False),
    sa.Column("billable", sa.Boolean, nullable=False),
    sa.Column("fee_vnd", sa.BigInteger, nullable=False),
    sa.Column("quote_vnd", sa.BigInteger, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("rule", sa.Integer, nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),  # English, as `incidents explain` prints
    sa.Column("explanation", sa.JSON),  # the same as data (policy.reasons); None before i15d
    sa.Column("facts", sa.JSON, nullable=False),
)

visits = sa.Table(
    "visits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("fee_vnd", sa.BigInteger, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("technician", sa.String(100)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("note", sa.Text),
)

diagnostics = sa.Table(
    "diagnostics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id")),
    sa.Column("requested_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("bundle", sa.JSON, nullable=False),
)

# ----------------------------------------------------------------------------- updates (0003)
releases = sa.Table(
    "releases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("product", sa.String(64), nullable=False),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("regulation_ref", sa.Text),
    sa.Column("effective", sa.Date),
    sa.Column("notes", sa.Text),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("length", sa.BigInteger, nullable=False),
    sa.Column("published_by", sa.String(100), nullable=False),
    sa.Column("published_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("product", "version", name="uq_releases_product_version"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),  # update | reinstall | verify
    sa.Column("product", sa.String(64)),
    sa.Column("version", sa.String(40)),
    sa.Column("delivery", sa.String(20), nullable=False),  # network | media
    sa.Column("stop_product", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

job_machines = sa.Table(
    "job_machines",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
    # What agents call the job: the instruction's job_id.
    sa.Column("ref", sa.String(80), nullable=False, unique=True),
    sa.Column("product", sa.String(64)),
    sa.Column("version", sa.String(40)),
    sa.Column("status", sa.String(40), nullable=False),
    sa.Column("outcome", sa.String(40)),
    sa.Column("detail", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.UniqueConstraint("job_id", "agent_id", name="uq_job_machines_job_agent"),
)

job_steps = sa.Table(
    "job_steps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_machine_id", sa.Integer, sa.ForeignKey("job_machines.id"), nullable=False),
    sa.Column("step", sa.String(40), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("detail", sa.Text),
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("release_id", sa.Integer, sa.ForeignKey("releases.id"), nullable=False),
    sa.Column("product", sa.String(64), nullable=False),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("effective", sa.Date),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")),
    sa.Column("percents", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("sent_waves", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("started_by", sa.String(100), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("last_targeting_at", UTCDateTime),
)

rollout_machines = sa.Table(
    "rollout_machines",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id"), nullable=False),
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("wave", sa.Integer),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id")),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Column("deadline_incident", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("from_version", sa.String(40)),  # reported when targeted; NULL: unknown
    sa.Index("ix_rollout_machines_job", "job_id"),
)

# ----------------------------------------------------------------------------- notifications (i14)
notify_channels = sa.Table(
    "notify_channels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("kind", sa.String(20), nullable=False),  # email | webhook | apprise
    sa.Column("config", sa.JSON, nullable=False),  # what is not secret
    sa.Column("secret", sa.Text, nullable=False, server_default=""),  # Fernet token
    sa.Column("rate_per_minute", sa.Integer, nullable=False),
    sa.Column("healthy", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("last_success_at", UTCDateTime),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

notify_recipients = sa.Table(
    "notify_recipients",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("channel_id", sa.Integer, sa.ForeignKey("notify_channels.id"), nullable=False),
    sa.Column("address", sa.String(255), nullable=False, server_default=""),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("workdays", sa.String(40), nullable=False),
    sa.Column("opens", sa.String(5), nullable=False),
    sa.Column("closes", sa.String(5), nullable=False),
    # A customer's own contact: hears only about that customer, only customer-facing events.
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")),
    sa.Column("technician", sa.String(100)),  # whose visits the daily digest lists
    sa.Column("created_at", UTCDateTime, nullable=False),
)

notify_routes = sa.Table(
    "notify_routes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("recipient_id", sa.Integer, sa.ForeignKey("notify_recipients.id"), nullable=False),
    sa.Column("events", sa.String(400), nullable=False),  # comma list of event kinds, or *
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")),  # NULL: every customer
    sa.Column("min_severity", sa.String(20), nullable=False),
    sa.Column("kinds", sa.String(400), nullable=False, server_default=""),  # incident kinds; "" any
    sa.Column("created_at", UTCDateTime, nullable=False),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # One row per event and recipient: a second insert of the same key is ignored.
    sa.Column("key", sa.String(200), nullable=False, unique=True),
    sa.Column("recipient_id", sa.Integer, sa.ForeignKey("notify_recipients.id"), nullable=False),
    sa.Column("channel_id", sa.Integer, sa.ForeignKey("notify_channels.id"), nullable=False),
    sa.Column("event", sa.String(40), nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("customer_id", sa.Integer),
    sa.Column("thread", sa.String(80), nullable=False, server_default=""),
    sa.Column("fold_key", sa.String(160)),
    sa.Column("facts", sa.JSON, nullable=False),
    # pending | sending | sent | dead | digest (waits for the digest) | digested
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claim", sa.String(40)),
    sa.Column("claimed_until", UTCDateTime),
    sa.Column("delivery", sa.String(60)),  # idempotency key the receiver sees
    sa.Column("sent_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("digest_id", sa.Integer),
)

web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("lang", sa.String(5), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("flash", sa.JSON, nullable=False),
)
