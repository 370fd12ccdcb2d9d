"""One engine worker as a Ray Serve application: the worker's own OpenAI app behind Ray Serve's HTTP proxy,
so the gateway speaks to a Ray replica exactly as to a worker process.

Importing this module loads neither torch nor the engine (the gateway imports it to deploy): the app is built
on the replica, when Ray starts it.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from moecloud.config import EngineSettings, ServingSettings, load_settings


def engine_application(checkpoint: str, served_model_name: str, engine: EngineSettings, serving: ServingSettings,
                       *, cpus: float, max_ongoing_requests: int) -> Any:
    """A Ray Serve application of one replica serving ``checkpoint`` as ``served_model_name``.

    Ray Serve waits ``serving.shutdown_grace_seconds`` for requests in flight when the application is deleted
    (the worker's drain), and restarts the replica if its actor dies.
    """

    def build_app() -> Any:  # runs on the replica: only there are torch and the engine imported
        from moecloud.serving.worker import ExitOnEngineFailure, serving_app, start_engine_client

        settings = load_settings(engine=engine, serving=serving)
        # a dead engine ends the actor's process (Ray then restarts it), as it ends a worker process
        on_fatal = ExitOnEngineFailure(settings.serving.engine_failure_grace_seconds)
        return serving_app(start_engine_client(checkpoint, settings, on_fatal), settings, served_model_name)

    deployment = serve.deployment(
        serve.ingress(build_app)(), name="engine", ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=max_ongoing_requests, graceful_shutdown_timeout_s=serving.shutdown_grace_seconds,
    )
    return deployment.bind()
