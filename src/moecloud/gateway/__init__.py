"""The multi-tenant gateway: API keys, metering, prepaid credit, rate limits, audit log, admin API.

It speaks OpenAI's protocol on both sides and never imports torch or the engine. The app is built by
``moecloud.gateway.app.create_app(settings)``.
"""
