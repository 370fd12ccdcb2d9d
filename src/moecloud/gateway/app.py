"""Building the gateway app: state, routes, error handling, and the expired-hold reconciler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from moecloud import __version__
from moecloud.config import Settings
from moecloud.gateway import admin, proxy
from moecloud.gateway.auth import Authenticator
from moecloud.gateway.catalog import Catalog
from moecloud.gateway.credentials import load_secrets
from moecloud.gateway.errors import install_error_handlers
from moecloud.gateway.limits import RateLimiter
from moecloud.gateway.state import GatewayState
from moecloud.gateway.upstream import Upstream
from moecloud.store import Database
from moecloud.store.ledger import release_expired_holds

log = logging.getLogger(__name__)


def create_app(settings: Settings, database: Database | None = None) -> FastAPI:
    """The gateway as an ASGI app. Opens (and migrates) the database unless one is given."""
    database = database or Database.open(settings.database_url())
    secrets = load_secrets(settings)
    if secrets.admin_key_created:
        log.warning(
            "generated the admin key (shown once, kept in %s): %s",
            settings.home / "secrets" / "admin_key",
            secrets.admin_key,
        )
    state = GatewayState(
        settings=settings,
        database=database,
        secrets=secrets,
        authenticator=Authenticator(database, settings.gateway),
        limiter=RateLimiter(),
        catalog=Catalog(database, settings),
        upstream=Upstream(settings.gateway),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            group.start_soon(_reconcile_forever, state)
            try:
                yield
            finally:
                group.cancel_scope.cancel()
                await state.upstream.aclose()

    app = FastAPI(title="moecloud gateway", version=__version__, lifespan=lifespan)
    app.state.gateway = state
    install_error_handlers(app)
    app.include_router(proxy.router)
    app.include_router(admin.router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _reconcile_forever(state: GatewayState) -> None:
    """Holds left by a crashed request are given back once they expire."""

    def release() -> int:
        with state.database.write() as session:
            return release_expired_holds(session)

    while True:
        await anyio.sleep(state.settings.billing.reconcile_interval_seconds)
        try:
            released = await anyio.to_thread.run_sync(release)
        except Exception:
            log.exception("could not release expired holds")
            continue
        if released:
            log.warning("released %d expired holds", released)
