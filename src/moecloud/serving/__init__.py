"""The OpenAI-compatible API around one engine (`moecloud worker`): request schemas, routes, the engine client
(the engine loop runs off the event loop), SSE, usage reports and the Ray Serve replica app. Never imports the
gateway or the store."""
