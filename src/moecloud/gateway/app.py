"""Building the gateway app: state, routes, error handling, and the background chores (the expired-hold
reconciler, the retention purge)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import anyio
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from moecloud import __version__
from moecloud.config import Settings
from moecloud.gateway.admin.evaluations import fail_interrupted
from moecloud.gateway.admin.schemas import ScaleIn
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.api import account, admin, apidocs, console, gallery, inference, prices, session, summaries
from moecloud.gateway.api.access_log import AccessLog
from moecloud.gateway.api.deps import GatewayState
from moecloud.gateway.errors import install_error_handlers
from moecloud.gateway.fleet.autoscale import Autoscaler
from moecloud.gateway.fleet.catalog import Catalog, Route
from moecloud.gateway.fleet.control import ControlLoop
from moecloud.gateway.fleet.process_launcher import WorkerLauncher, WorkerRecords, worker_records_dir
from moecloud.gateway.fleet.ray_launcher import EngineApplication, RayLauncher
from moecloud.gateway.fleet.replicas import BackendLauncher, Launcher, ReplicaSet
from moecloud.gateway.tenancy.auth import Authenticator
from moecloud.gateway.tenancy.credentials import GatewaySecrets, load_secrets
from moecloud.gateway.tenancy.limits import RateLimiter
from moecloud.gateway.tenancy.metering import Metering
from moecloud.gateway.tenancy.policies import default_policy
from moecloud.gateway.tenancy.sessions import ConsoleSessions
from moecloud.gateway.traffic.admission import Dispatcher
from moecloud.gateway.traffic.failover import Failover
from moecloud.gateway.traffic.metrics import GatewayMetrics, count_requests
from moecloud.gateway.traffic.screening import ScreeningRecorder
from moecloud.gateway.traffic.upstream import Upstream
from moecloud.store import Database
from moecloud.store.ledger import release_expired_holds, release_gateway_holds
from moecloud.store.retention import purge
from moecloud.web.errors import APIError
from moecloud.web.nul_guard import RefuseNul

log = logging.getLogger(__name__)


def create_app(settings: Settings, database: Database | None = None, *, launcher: Launcher | None = None,
               ray_application: EngineApplication | None = None) -> FastAPI:
    """The gateway as an ASGI app. Opens (and migrates) the database unless one is given. Local replicas are
    started by ``launcher`` unless ``scaling.manage_local_replicas`` is off; by default, `moecloud worker`
    processes, and for a deployment whose backend is ``ray`` Ray Serve applications built by ``ray_application``
    (without it the ray backend is refused; ``moecloud.launch.platform_app`` hands it in).
    """
    database = database or Database.open(settings.database_url())
    secrets = load_secrets(settings)
    if secrets.admin_key_created:  # its value never goes to a log: logs are shipped and kept elsewhere
        log.warning("generated the admin key, kept in %s (mode 0600)", secrets.admin_key_path)
    if settings.scaling.manage_local_replicas and (reaped := WorkerRecords(worker_records_dir(settings)).reap()):
        log.warning("killed %d workers left running by a gateway that died", reaped)
    launcher = launcher or _default_launcher(settings, ray_application)
    state = _build_state(settings, database, secrets, launcher)
    released = _release_holds_left_behind(database, settings.billing.gateway_name)
    if released:
        log.warning("released %d holds left by requests the last gateway did not finish", released)
    interrupted = fail_interrupted(database, Admin(database, settings, secrets.audit_key, actor="gateway"))
    if interrupted:
        log.warning("%d evaluations were left running by the last gateway: marked failed", interrupted)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_every, settings.billing.reconcile_interval_seconds, partial(_release_expired, state),
                                 "could not release expired holds")
                group.start_soon(_every, settings.retention.purge_interval_seconds, partial(_purge, state),
                                 "could not purge usage and audit data past their retention")
                group.start_soon(state.control.run_forever)
                try:
                    yield
                finally:
                    group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):  # local workers are stopped (drained) even on cancellation
                if state.control.replicas is not None:
                    await state.control.replicas.aclose()
                await state.upstream.aclose()

    app = FastAPI(title="moecloud gateway", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state
    install_error_handlers(app)
    app.include_router(inference.router)
    app.include_router(admin.router)
    app.include_router(prices.router)
    app.include_router(session.router)
    app.include_router(account.router)
    app.include_router(summaries.router)
    app.include_router(gallery.router)
    app.include_router(apidocs.router)
    app.include_router(console.router)
    app.add_middleware(count_requests, metrics=state.metrics)
    app.add_middleware(RefuseNul)
    app.add_middleware(AccessLog)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _build_state(
    settings: Settings, database: Database, secrets: GatewaySecrets, launcher: Launcher
) -> GatewayState:
    dispatcher = Dispatcher(settings)
    wake = asyncio.Event()  # a replica came or went: the control loop hands out its capacity at once
    replicas = (
        ReplicaSet(launcher,
                   on_change=wake.set, failures_to_replace=settings.routing.health_failures_to_replace)
        if settings.scaling.manage_local_replicas else None
    )
    catalog = Catalog(database, settings, local=replicas)
    metrics = GatewayMetrics(dispatcher, replicas.counts if replicas else dict)
    upstream = Upstream(settings.gateway)
    autoscaler_admin = Admin(database, settings, secrets.audit_key, actor="autoscaler")
    control = ControlLoop(
        settings=settings, catalog=catalog, traffic=dispatcher, health=upstream,
        scale=lambda name, count, reason: autoscaler_admin.scale_deployment(name, ScaleIn(replicas=count),
                                                                            reason=reason),
        on_scaled=lambda name, direction, trigger: metrics.scale_events.labels(name, direction, trigger).inc(),
        replicas=replicas, autoscaler=Autoscaler(settings.scaling), wake=wake,
    )

    def on_retry(route: Route, error: APIError) -> None:
        log.warning("retrying a request that failed on %s before its first token: %s", route.replica, error)
        metrics.retries.labels(route.model, route.replica).inc()
        wake.set()  # a replica that failed may have died: reconcile (and replace it) now

    limiter = RateLimiter()
    authenticator = Authenticator(database, settings.gateway, default_priority=settings.admission.default_priority,
                                  default_policy=default_policy(settings.screening))
    return GatewayState(
        settings=settings,
        database=database,
        secrets=secrets,
        authenticator=authenticator,
        limiter=limiter,
        catalog=catalog,
        upstream=upstream,
        dispatcher=dispatcher,
        failover=Failover(dispatcher, catalog, settings.routing, on_retry, replicas),
        metrics=metrics,
        control=control,
        metering=Metering(settings.billing, database, limiter, dispatcher, upstream),
        screening=ScreeningRecorder(database, secrets.audit_key, metrics.screening),
        sessions=ConsoleSessions(database, settings.console, authenticator, admin_key=secrets.admin_key,
                                 audit_key=secrets.audit_key),
    )


def _default_launcher(settings: Settings, ray_application: EngineApplication | None) -> Launcher:
    launchers: dict[str, Launcher] = {"process": WorkerLauncher(settings)}
    if ray_application is not None:
        launchers["ray"] = RayLauncher(settings, ray_application)
    return BackendLauncher(launchers)


def _release_holds_left_behind(database: Database, gateway: str) -> int:
    """At start none of this gateway's requests runs yet: every hold of its name belongs to a request that died
    with the previous process."""
    with database.write() as session:
        return release_gateway_holds(session, gateway)


async def _every(seconds: float, chore: Callable[[], None], failure: str) -> None:
    """``chore`` every ``seconds``, in a worker thread (it blocks on the database); a failure is logged and the
    next round comes as usual."""
    while True:
        await anyio.sleep(seconds)
        try:
            await anyio.to_thread.run_sync(chore)
        except Exception:
            log.exception(failure)


def _release_expired(state: GatewayState) -> None:
    """Holds left by a crashed request are given back once they expire."""
    with state.database.write() as session:
        released = release_expired_holds(session)
    if released:
        log.warning("released %d expired holds", released)


def _purge(state: GatewayState) -> None:
    result = purge(state.database, state.settings.retention, state.secrets.audit_key, actor="gateway")
    if result.usage_deleted or result.audit_deleted:
        log.info("retention: deleted %d usage records and %d audit rows", result.usage_deleted, result.audit_deleted)
