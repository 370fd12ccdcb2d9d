"""What both HTTP edges (the engine worker and the gateway) share: OpenAI's error shape and the errors both
raise, the request bounds, the request-counting middleware, free ports and health waits. No torch, no store."""
