"""Every table's rows out of one consistent snapshot, and back into an empty database: the SQL half of
``moecloud.toolkit.backup`` (the archive format lives there).

Rows are read through the tables' own column types, so money comes out as exact ``Decimal`` and timestamps
as aware UTC datetimes whatever the engine stored, and go back in the same way on any engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Integer, Table, func, inspect, select, text
from sqlalchemy.orm import Session

from moecloud.store.db import Database, alembic_config
from moecloud.store.tables import Base

STREAM_ROWS = 1_000


def tables() -> list[Table]:
    """Every table, parents before the tables that refer to them."""
    return list(Base.metadata.sorted_tables)


@dataclass
class Snapshot:
    session: Session
    revision: str | None
    dialect: str

    def rows(self, table: Table) -> Iterator[dict[str, Any]]:
        """``table``'s rows in primary-key order, fetched ``STREAM_ROWS`` at a time (a server-side cursor on
        PostgreSQL), never the whole table in memory."""
        query = select(table).order_by(*table.primary_key.columns)
        result = self.session.execute(query, execution_options={"yield_per": STREAM_ROWS})
        for row in result.mappings():
            yield dict(row)


@contextmanager
def snapshot(database: Database) -> Iterator[Snapshot]:
    """One read transaction that sees every table as of one moment: REPEATABLE READ on PostgreSQL; on SQLite
    (WAL) a read transaction's view is fixed by its first read, which is the revision's."""
    with database.read() as session:
        if not database.is_sqlite:
            session.connection(execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True})
        connection = session.connection()
        yield Snapshot(session, MigrationContext.configure(connection).get_current_revision(),
                       connection.dialect.name)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revision(revision: str) -> bool:
    """Whether this code has ``revision`` among its migrations (an archive made by a newer moecloud has not)."""
    script = ScriptDirectory.from_config(alembic_config())
    return any(candidate.revision == revision for candidate in script.walk_revisions())


def revision_at_or_after(revision: str | None, other: str) -> bool:
    """Whether the migrations up to ``revision`` include ``other``."""
    if revision is None:
        return False
    script = ScriptDirectory.from_config(alembic_config())
    return any(candidate.revision == other for candidate in script.iterate_revisions(revision, "base"))


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def first_nonempty_table(database: Database) -> str | None:
    """The first moecloud table that holds a row, or None when every one is empty or absent."""
    present = set(inspect(database.engine).get_table_names())
    with database.read() as session:
        for table in tables():
            if table.name in present and session.execute(select(table).limit(1)).first() is not None:
                return table.name
    return None


def insert(session: Session, table: Table, rows: Iterable[dict[str, Any]], *, batch_rows: int) -> Iterator[int]:
    """Insert ``rows`` ``batch_rows`` per statement; yields the count after each statement."""
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_rows:
            session.execute(table.insert(), batch)
            yield len(batch)
            batch = []
    if batch:
        session.execute(table.insert(), batch)
        yield len(batch)


def reset_sequences(session: Session) -> None:
    """On PostgreSQL, point each serial id's sequence past the restored rows, so the next row does not collide."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite gives an INTEGER PRIMARY KEY max(id) + 1
    for table in tables():
        keys = list(table.primary_key.columns)
        if len(keys) != 1 or not isinstance(keys[0].type, Integer):
            continue
        sequence = session.scalar(select(func.pg_get_serial_sequence(table.name, keys[0].name)))
        if sequence is not None:
            highest = f"SELECT max({keys[0].name}) FROM {table.name}"  # names from our own metadata
            session.execute(text(f"SELECT setval(:sequence, COALESCE(({highest}), 0) + 1, false)"),
                            {"sequence": sequence})


def count_rows(session: Session, table: Table) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0
