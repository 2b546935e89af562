"""``dfrt serve --ray``: the same OpenAI-compatible app as a Ray Serve application.

Three deployments: the ingress (the FastAPI app of :mod:`dfrt.serve.app` around an
:class:`~dfrt.serve.engine.Engine` whose pipeline is a :class:`~dfrt.cluster.remote.RemotePipeline`), the
visual encoder and the LLM (:mod:`dfrt.cluster.deployments`), the last two with their own replica counts,
autoscaling bounds and reservations (``--cpus``, ``--gpus``, ``--resources``). The ingress reserves no CPU
and works on as many requests at once as the LLM can have replicas (times :data:`REQUESTS_PER_REPLICA`);
answers still stream. Live streams (``--watch``) stay with one-machine ``dfrt serve``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfrt.cluster.connect import LOCAL, connected, preflight
from dfrt.cluster.deployments import LanguageModel, ModelSettings, VisualEncoder
from dfrt.cluster.placement import ROLES, Cluster, check_capacity
from dfrt.errors import BackendError, ConfigError
from dfrt.serve.engine import ServeOptions

log = logging.getLogger(__name__)
APP_NAME = "dfrt"
HEAD_NODE = "node:__internal_head__"  # the resource only the head node has
REQUESTS_PER_REPLICA = 2  # requests a replica takes at once (its lock runs one; the next waits there)


class Ingress:
    """The HTTP app; built when Serve starts the replica (:meth:`__serve_build_asgi_app__`)."""

    def __init__(self, options: ServeOptions, encoder: Any, llm: Any, workers: int) -> None:
        from dfrt.cluster.remote import RemotePipeline
        from dfrt.runtime.bundle import Bundle
        from dfrt.serve.engine import Engine

        bundle = Bundle.open(ModelSettings(options.bundle).bundle_path())
        pipe = RemotePipeline(bundle, encoder, llm, int(options.max_body_mb * (1 << 20)), options.timeout)
        model_id = options.model_name or bundle.root.resolve().name
        self.engine = Engine(options, pipe, model_id, workers=workers)  # type: ignore[arg-type]

    def __serve_build_asgi_app__(self) -> Any:
        from dfrt.serve import create_app

        return create_app(self.engine)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def check(options: ServeOptions, cluster: Cluster) -> None:
    """What ``--ray`` cannot serve, refused before Ray starts."""
    from dfrt.serve import check_options, warn_if_open

    check_options(options)
    warn_if_open(options)
    if options.watch:
        raise ConfigError(
            "--watch is not available with --ray: watch live streams with dfrt serve on one machine"
        )
    if options.port == 0:
        raise ConfigError("--port 0 is not available with --ray: Ray Serve needs the port named")
    if cluster.reserves("encoder").gpus == 0 and options.backend == "tensorrt":
        raise ConfigError("--backend tensorrt with --ray needs --gpus (each replica's share of a GPU)")


def application(options: ServeOptions, cluster: Cluster) -> Any:
    """The bound Serve application (ingress -> encoder, LLM) for ``serve.run``."""
    from ray import serve

    def settings(role: str) -> ModelSettings:
        threads = max(1, int(cluster.reserves(role).cpus))  # the graphs' and the LLM's threads
        return ModelSettings(
            options.bundle,
            options.llm,
            options.backend,
            options.precision,
            options.ctx,
            threads,
            options.selection,
        )

    scale = cluster.scale

    def deployment(cls: type, role: str) -> Any:
        config: dict[str, Any] = {
            "ray_actor_options": cluster.reserves(role).actor_options(),
            "max_ongoing_requests": REQUESTS_PER_REPLICA,
        }
        autoscaling = scale.autoscaling(role)
        if autoscaling is None:
            config["num_replicas"] = scale.replicas[role]
        else:
            config["autoscaling_config"] = autoscaling
        return serve.deployment(cls, name=cls.__name__).options(**config)

    encoder = deployment(VisualEncoder, "encoder").bind(settings("encoder"))
    llm = deployment(LanguageModel, "llm").bind(settings("llm"))
    workers = REQUESTS_PER_REPLICA * max(scale.max_replicas.values())
    on_head = {"num_cpus": 0, "resources": {HEAD_NODE: 0.001}}  # where --media-path and the proxy are
    ingress = serve.deployment(serve.ingress()(Ingress), name="Ingress").options(
        ray_actor_options=on_head, max_ongoing_requests=max(100, 4 * (options.queue + workers))
    )
    return ingress.bind(options, encoder, llm, workers)


def start(options: ServeOptions, cluster: Cluster) -> None:
    """Deploy on the cluster Ray is connected to, HTTP on ``options.host:options.port``; refused (one
    :class:`ConfigError`) when the cluster cannot hold the replicas or already serves a dfrt application."""
    import ray
    from ray import serve

    nodes, replicas = ray.nodes(), cluster.scale.replicas
    for role in ROLES:
        check_capacity(nodes, cluster.reserves(role), replicas[role], f"{role} replica")
    if cluster.reserves("encoder") == cluster.reserves("llm"):  # the same nodes hold both
        check_capacity(nodes, cluster.reserves("llm"), sum(replicas.values()), "replica")
    quiet = {"log_level": "INFO" if cluster.verbose else "WARNING"}
    logging.getLogger("ray.serve").setLevel(logging.INFO if cluster.verbose else logging.WARNING)
    serve.start(
        http_options={"host": options.host, "port": options.port},
        proxy_location="HeadOnly",
        logging_config=quiet,
    )
    _check_proxy(options)
    if APP_NAME in serve.status().applications:
        raise ConfigError(
            f"the Ray cluster already serves a {APP_NAME!r} application (another dfrt serve --ray): stop it "
            "first (serve shutdown, or Ctrl-C in that dfrt)"
        )
    try:
        serve.run(application(options, cluster), name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as e:  # Serve reports a replica that failed to start as the controller's traceback
        raise BackendError(f"Ray Serve could not start dfrt: {_replica_error(e)}") from e
    except BaseException:  # interrupted while the replicas start: leave nothing behind on the cluster
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
        raise


def _check_proxy(options: ServeOptions) -> None:
    """Serve already running on the cluster keeps its HTTP address: refuse rather than print a wrong URL."""
    from ray.serve import context

    try:
        config = context._get_global_client().http_config  # no public API says where the proxy listens
    except Exception:  # a private API: if it moved, there is nothing to compare
        return
    if (config.host, config.port) != (options.host, options.port):
        raise ConfigError(
            f"Ray Serve on this cluster already listens on {config.host}:{config.port}: give --host "
            f"{config.host} --port {config.port}, or shut Serve down first (serve shutdown)"
        )


def _replica_error(error: BaseException) -> str:
    """The last line of the replica's own error in Serve's message (the whole traceback is in Ray's logs)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dfrt.errors.") or "Error:" in line]
    return (errors[-1] if errors else lines[0] if lines else type(error).__name__)[:300]


def run_ray_server(
    options: ServeOptions, cluster: Cluster, progress: Callable[[str], None] = lambda message: None
) -> int:
    """Serve on Ray until interrupted (Ctrl-C, SIGTERM); the application is deleted on the way out."""
    check(options, cluster)  # and warns when it listens beyond this machine without --api-key
    preflight(cluster.address)
    stop = threading.Event()
    try:
        with connected(cluster.address, cluster.verbose):
            from ray import serve

            started = threading.Event()

            def on_term(*_: object) -> None:
                stop.set()
                if not started.is_set():  # still starting the replicas: stop that too
                    raise KeyboardInterrupt

            # after ray.init, which installs a handler of its own that prints to stderr
            previous = signal.signal(signal.SIGTERM, on_term)
            try:
                scale = cluster.scale
                progress(
                    f"starting on Ray: {scale.replicas['encoder']} encoder and {scale.replicas['llm']} LLM "
                    "replica(s) (loading the bundle on each)"
                )
                start(options, cluster)
                started.set()
                try:
                    bundle = ModelSettings(options.bundle).bundle_path()
                    model = options.model_name or Path(bundle).resolve().name
                    where = f"http://{options.host}:{options.port}/"
                    progress(f"serving {model} on {where} via Ray (Ctrl-C to stop)")
                    while not stop.wait(0.5):
                        pass
                finally:
                    serve.delete(APP_NAME)
                    if cluster.address == LOCAL:
                        serve.shutdown()
            finally:
                signal.signal(signal.SIGTERM, previous)
    except KeyboardInterrupt:
        pass
    return 0
