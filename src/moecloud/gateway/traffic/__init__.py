"""Getting one request answered: the fair admission queue and replica leases (``admission``), the router,
circuit breakers, failover before the first token, the upstream HTTP client and the SSE stream relay, and
the gateway's Prometheus metrics. Knows nothing of money or tenants beyond a ticket's priority and weight.
May import fleet."""
