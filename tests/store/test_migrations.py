"""Migrations build the schema the tables describe, from an empty database, and tear it down again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from moecloud.store import Database
from moecloud.store.db import alembic_config
from moecloud.store.tables import Base


def test_migrations_from_empty_database_match_the_tables(database_url: str) -> None:
    database = Database.open(database_url)
    try:
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert context.get_current_revision() == "0008"
        database.upgrade()  # idempotent
        with database.engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(inspect(database.engine).get_table_names()) <= {"alembic_version"}
        database.upgrade()
        assert {"tenants", "api_keys", "holds", "ledger", "usage", "audit_log", "aliases", "evaluations"} <= set(
            inspect(database.engine).get_table_names()
        )
    finally:
        database.dispose()
