"""Bring the state store's schema to the newest Alembic revision.

Every task opens the state store, and the schema is nearly always current already, so that
check costs one query and no Alembic import; Alembic loads only when there is work to do.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def newest_revision() -> str:
    """The head revision, read off the file names: each revision is numbered like its file."""
    return max(path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def head() -> str:
    """The head revision as Alembic computes it (a test holds it equal to ``newest_revision``)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    """Upgrade to head; a no-op (one query) when already there. PostgreSQL runs it under an
    advisory lock so parallel first tasks do not race to create the tables."""
    if current(engine) == newest_revision():
        return
    from alembic import command

    cfg = _config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7244511)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg
