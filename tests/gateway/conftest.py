from harness import database_url, gateway, make_gateway, upstream  # noqa: F401  (fixtures)
from real_worker import engine_gateway, engine_worker, r1_worker, tools_worker  # noqa: F401  (fixtures: real workers)
