"""Who is calling and what they may spend: API keys to callers (``auth``), per-tenant and per-key RPM/TPM
(``limits``), the gateway's own secrets (``credentials``), and ``metering``: the one owner of a request's
admission, credit hold, replica lease and settlement. May import traffic, fleet and the store."""
