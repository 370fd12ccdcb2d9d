"""Persistence: SQLAlchemy 2 tables and Alembic migrations; SQLite by default, PostgreSQL by URL.

The only package that writes SQL. Functions take a ``Session`` so the caller decides what one transaction
covers (an admin action and its audit row commit together; so do a settlement and its usage record).
"""

from moecloud.store.db import Database

__all__ = ["Database"]
