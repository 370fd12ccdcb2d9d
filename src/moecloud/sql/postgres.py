"""`moecloud sql install-postgres URL`: the same functions inside a PostgreSQL database, as PL/Python
(``plpython3u``, Debian's ``postgresql-plpython3-<version>``) functions calling the gateway.

The gateway's URL and key are database settings (``ALTER DATABASE ... SET moecloud.base_url / moecloud.api_key``),
never part of a function's body; a new session reads them. Each function runs ``moecloud.sql.requests`` (its
text is kept in the database as ``moecloud__module()``) with the server's Python: one request per call, NULL in
gives NULL out, a failure an error naming the function and the input (NULL from the ``try_`` variants).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

MODULE = Path(__file__).with_name("requests.py")
# name, parameters, return type; the first two parameters are required, the third too unless it has a default
FUNCTIONS = [
    ("moe_complete", "model text, prompt text, options text DEFAULT NULL", "text"),
    ("moe_chat", "model text, messages text, options text DEFAULT NULL", "text"),
    ("moe_classify", "model text, input text, labels text[]", "text"),
    ("moe_extract", "model text, input text, json_schema text", "jsonb"),
    ("moe_score", "model text, prompt text, continuation text", "double precision"),
]
BODY = """
if "moecloud" not in GD:
    scope = {{"__name__": "moecloud_sql"}}
    exec(plpy.execute("SELECT moecloud__module() AS source")[0]["source"], scope)
    GD["moecloud"] = scope
return GD["moecloud"]["pg_call"](plpy, "{name}", [{arguments}], {failing})
"""


def connection_url(url: str) -> str:
    """A libpq URL from a SQLAlchemy one (``postgresql+psycopg://`` -> ``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def install(url: str, base_url: str, api_key: str) -> list[str]:
    """Create the functions in the database at ``url`` and keep ``base_url``/``api_key`` as its settings; returns
    the functions' names."""
    names = []
    with psycopg.connect(connection_url(url), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
        conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION moecloud__module() RETURNS text LANGUAGE sql IMMUTABLE "
                             "AS $moecloud$ SELECT {} $moecloud$").format(sql.Literal(MODULE.read_text())))
        for name, parameters, returns in FUNCTIONS:
            arguments = ", ".join(p.split()[0] for p in parameters.split(", "))
            for prefix in ("", "try_"):
                body = BODY.format(name=name, arguments=arguments, failing=not prefix)
                conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}({}) RETURNS {} LANGUAGE plpython3u "
                                     "AS {}").format(sql.Identifier(prefix + name), sql.SQL(parameters),
                                                     sql.SQL(returns), sql.Literal(body)))
                names.append(prefix + name)
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        for setting, value in (("moecloud.base_url", base_url.rstrip("/")), ("moecloud.api_key", api_key)):
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(database), sql.SQL(setting), sql.Literal(value)))
    return names
