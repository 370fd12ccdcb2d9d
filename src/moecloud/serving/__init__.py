"""The OpenAI-compatible API around one engine (`moecloud worker`) and the one-command launcher (`serve`)."""
