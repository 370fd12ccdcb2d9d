"""One engine worker as a Ray Serve application: the worker's own OpenAI app behind Ray Serve's HTTP proxy,
so the gateway speaks to a Ray replica exactly as to a worker process.

Importing this module loads neither torch nor the engine (`moecloud.launch` hands it to the gateway, which
deploys with it): the app is built on the replica, when Ray starts it, from the settings the gateway hands down.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from moecloud.config import Settings, settings_for_child, settings_from_parent


def engine_application(checkpoint: str, served_model_name: str, settings: Settings,
                       *, cpus: float, max_ongoing_requests: int) -> Any:
    """A Ray Serve application of one replica serving ``checkpoint`` as ``served_model_name``.

    Ray Serve waits ``serving.shutdown_grace_seconds`` for requests in flight when the application is deleted
    (the worker's drain), and restarts the replica if its actor dies.
    """

    handed_down = settings_for_child(settings)  # a string travels to the replica; the gateway's secrets do not
    grace = settings.serving.shutdown_grace_seconds

    def build_app() -> Any:  # runs on the replica: only there are torch and the engine imported
        from moecloud.serving.worker import ExitOnEngineFailure, serving_app, start_engine_client

        settings = settings_from_parent(handed_down)
        # a dead engine ends the actor's process (Ray then restarts it), as it ends a worker process
        on_fatal = ExitOnEngineFailure(settings.serving.engine_failure_grace_seconds)
        return serving_app(start_engine_client(checkpoint, settings, on_fatal), settings, served_model_name)

    deployment = serve.deployment(
        serve.ingress(build_app)(), name="engine", ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=max_ongoing_requests, graceful_shutdown_timeout_s=grace,
    )
    return deployment.bind()
