"""What serves each model: the catalog (deployments, prices and aliases from the store, resolved to routes),
external providers' keys, local replicas and their launchers (worker processes; Ray Serve applications built
by a factory ``moecloud.launch`` hands in), the autoscaling policy and the control loop that reconciles,
scales and health-checks. The bottom room: imports only the store, config and ``moecloud.web``; what it
needs of traffic (the loop's view of queues) it takes as a protocol."""
