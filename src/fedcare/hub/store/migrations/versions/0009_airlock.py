"""The output airlock: export requests and the site stewards' decisions on them.

A request that the automatic checks refused, or a steward rejected, is final: the database
refuses to UPDATE it (a trigger), and refuses to UPDATE or DELETE a decision, so no code path
(an API route, a script on the hub's database) can turn a refusal into a release or rewrite
who approved what. Neither table is referenced by a foreign key of another's, and the
studies table is only referenced: no table is rebuilt.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = "'refused_by_checks', 'rejected'"
FINAL_MESSAGE = "a refused or rejected export request is final"
DECISION_MESSAGE = "export decisions are immutable"


def upgrade() -> None:
    json = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
    op.create_table(
        "export_requests",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("artifact", sa.String(128), nullable=False),
        sa.Column("requester", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checks", json, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("sites", json, nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('refused_by_checks', 'awaiting_stewards', 'approved', "
                           "'rejected', 'downloaded')", name=op.f("ck_export_requests_status")),
        sa.CheckConstraint("quorum >= 1", name=op.f("ck_export_requests_quorum_pos")),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"],
                                name=op.f("fk_export_requests_study_id_studies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_requests")),
    )
    op.create_index(op.f("ix_export_requests_study_id"), "export_requests", ["study_id"])
    op.create_index(op.f("ix_export_requests_requester"), "export_requests", ["requester"])
    op.create_table(
        "export_decisions",
        sa.Column("export_id", sa.String(64), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("approve", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["export_id"], ["export_requests.id"],
                                name=op.f("fk_export_decisions_export_id_export_requests")),
        sa.PrimaryKeyConstraint("export_id", "site", name=op.f("pk_export_decisions")),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER export_requests_final BEFORE UPDATE ON export_requests "
                   f"WHEN OLD.status IN ({FINAL}) BEGIN SELECT RAISE(ABORT, '{FINAL_MESSAGE}'); "
                   "END")
        op.execute("CREATE TRIGGER export_requests_no_delete BEFORE DELETE ON export_requests "
                   f"BEGIN SELECT RAISE(ABORT, '{FINAL_MESSAGE}'); END")
        for what in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER export_decisions_no_{what.lower()} BEFORE {what} ON "
                       f"export_decisions BEGIN SELECT RAISE(ABORT, '{DECISION_MESSAGE}'); END")
        return
    op.execute("CREATE FUNCTION export_requests_final() RETURNS trigger AS $$ BEGIN "
               f"IF TG_OP = 'DELETE' OR OLD.status IN ({FINAL}) THEN "
               f"RAISE EXCEPTION '{FINAL_MESSAGE}'; END IF; RETURN NEW; END $$ "
               "LANGUAGE plpgsql")
    op.execute("CREATE TRIGGER export_requests_final BEFORE UPDATE OR DELETE ON "
               "export_requests FOR EACH ROW EXECUTE FUNCTION export_requests_final()")
    op.execute("CREATE FUNCTION export_decisions_immutable() RETURNS trigger AS $$ BEGIN "
               f"RAISE EXCEPTION '{DECISION_MESSAGE}'; END $$ LANGUAGE plpgsql")
    op.execute("CREATE TRIGGER export_decisions_immutable BEFORE UPDATE OR DELETE ON "
               "export_decisions FOR EACH ROW EXECUTE FUNCTION export_decisions_immutable()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER export_decisions_immutable ON export_decisions")
        op.execute("DROP FUNCTION export_decisions_immutable()")
        op.execute("DROP TRIGGER export_requests_final ON export_requests")
        op.execute("DROP FUNCTION export_requests_final()")
    op.drop_table("export_decisions")
    op.drop_index(op.f("ix_export_requests_requester"), table_name="export_requests")
    op.drop_index(op.f("ix_export_requests_study_id"), table_name="export_requests")
    op.drop_table("export_requests")
