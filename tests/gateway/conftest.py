from harness import database_url, gateway, make_gateway, upstream  # noqa: F401  (fixtures)
