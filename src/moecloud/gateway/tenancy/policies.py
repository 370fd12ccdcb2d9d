"""The screening policy a request runs under: its key's stored policy, else its tenant's, else the gateway's
default (``screening.default_policy`` over ``Policy.default()``).

Stored policies are JSON (``tenants.screening_policy``, ``api_keys.screening_policy``); each distinct text is
parsed once. The resolved policy rides on the ``Caller``, which the authenticator keeps for
``auth_cache_seconds``: a changed policy applies to new requests at once in the gateway that changed it (its
cache is cleared) and within that time in the others.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from pydantic import ValidationError

from moecloud.config import ScreeningSettings
from moecloud.security import Policy

log = logging.getLogger(__name__)
PARSED_KEPT = 1024  # distinct stored policies kept parsed


def default_policy(settings: ScreeningSettings) -> Policy:
    """The policy of a tenant and key that have none. Raises pydantic's ValidationError for a bad setting."""
    return Policy.with_overrides(settings.default_policy)


def effective_policy(key_policy: str | None, tenant_policy: str | None, default: Policy) -> Policy:
    """The key's stored policy, else the tenant's, else ``default``. A stored text that no longer parses (it
    was written by hand) is logged and skipped, so the next level applies rather than no screening."""
    for stored in (key_policy, tenant_policy):
        if stored is not None:
            policy = parsed_policy(stored)
            if policy is not None:
                return policy
    return default


@lru_cache(maxsize=PARSED_KEPT)
def parsed_policy(stored: str) -> Policy | None:
    try:
        return Policy.model_validate_json(stored)
    except ValidationError as error:
        log.error("a stored screening policy does not parse; the next level applies: %s", error)
        return None
