"""Decision reasons as data (issue 15): each reason's message id and values, so the console
shows them in the reader's language. `reasons` keeps the English text; rows decided before
this have no explanation and show that text."""

import sqlalchemy as sa
from alembic import op

revision = "i15d_decision_explanation"
down_revision = "i15c_health_samples"


def upgrade() -> None:
    op.add_column("decisions", sa.Column("explanation", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("explanation")
