"""The multi-tenant gateway: one OpenAI-compatible front door for every deployment, with API keys, metering,
prepaid credit, rate limits, fair queueing, routing and failover, the audit log and the admin API.

It speaks OpenAI's protocol on both sides and never imports torch, the engine or serving. Its rooms are layers
(checked by import-linter, see ``pyproject.toml``): each may import only the rooms below it.

- ``app``: builds the gateway (``create_app``): state, routes, error handling, background loops.
- ``api``: HTTP routes and request checks only; each route parses, calls a service and shapes the answer.
- ``admin``: the admin service (what the CLI, the admin API and the console call), its schemas, evaluations.
- ``tenancy``: who is calling and what they may spend: keys, limits, the gateway's secrets, metering.
- ``traffic``: getting one request answered: admission queue, router, breakers, failover, upstream, relay.
- ``fleet``: what serves each model: catalog, replicas and their launchers, autoscaler, the control loop.
"""
