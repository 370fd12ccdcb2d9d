from databases import database_url  # noqa: F401  (the sqlite/postgresql fixture)
