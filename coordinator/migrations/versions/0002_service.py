"""Service: sites, contracts, maintenance packages, incidents, decisions, visits, diagnostics."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.UniqueConstraint("customer_id", "name", name="uq_sites_customer_name"),
    )
    op.create_table(
        "contracts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("signed_on", sa.Date, nullable=False),
        sa.Column("warranty_months", sa.Integer, nullable=False),
        sa.Column("machines", sa.Integer),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "maintenance_packages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("contract_id", sa.Integer, sa.ForeignKey("contracts.id"), nullable=False),
        sa.Column("start", sa.Date, nullable=False),
        sa.Column("end", sa.Date, nullable=False),
        sa.Column("tier", sa.String(40), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    with op.batch_alter_table("customers") as batch:
        # Business hours for due times; NULL means the policy's defaults.
        batch.add_column(sa.Column("workdays", sa.String(40)))
        batch.add_column(sa.Column("opens", sa.String(5)))
        batch.add_column(sa.Column("closes", sa.String(5)))
    with op.batch_alter_table("enrollment_tokens") as batch:
        batch.add_column(sa.Column(
            "contract_id", sa.Integer, sa.ForeignKey("contracts.id", name="fk_tokens_contract")))
        batch.add_column(sa.Column(
            "site_id", sa.Integer, sa.ForeignKey("sites.id", name="fk_tokens_site")))
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column(
            "contract_id", sa.Integer, sa.ForeignKey("contracts.id", name="fk_agents_contract")))
        batch.add_column(sa.Column(
            "site_id", sa.Integer, sa.ForeignKey("sites.id", name="fk_agents_site")))
        batch.add_column(sa.Column("joined_contract_on", sa.Date))
    op.create_table(
        "conditions",
        # Flap-suppression state of one trouble condition on one machine.
        sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), primary_key=True),
        sa.Column("kind", sa.String(40), primary_key=True),
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("incident_id", sa.Integer),
    )
    op.create_table(
        "incidents",
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
    )
    op.create_index("ix_incidents_agent_status", "incidents", ["agent_id", "status"])
    op.create_table(
        "decisions",
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
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("facts", sa.JSON, nullable=False),
    )
    op.create_table(
        "visits",
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
    op.create_table(
        "diagnostics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id")),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("bundle", sa.JSON, nullable=False),
    )
