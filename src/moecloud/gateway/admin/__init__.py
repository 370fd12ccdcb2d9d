"""The admin service (``service.Admin``): tenants, keys, credit, prices, deployments, aliases, usage and the
audit log, each change written with its audit row in one transaction. The CLI, the admin API and the console
all call it; ``schemas`` are its inputs and outputs. Also evaluations run by the gateway, and the bootstrap of
`moecloud serve` (default tenant, key, local deployment). May import tenancy, traffic, fleet, the store and
the toolkit's torch-free parts (tasks, evaluate, report)."""
