"""The two long-running services: the capture sink and the monitor, each with its /metrics.

``python -m monitoring capture`` / ``python -m monitoring monitor`` (what ``tritonstack up``
and the manifests run; ``tritonstack capture run`` / ``tritonstack monitor run`` call the same
functions). SIGTERM and SIGINT stop them after the batch or evaluation in hand.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server
from redis import Redis

from monitoring.exporter import Monitor
from monitoring.settings import CaptureSettings, MonitorSettings
from monitoring.sink import Sink, SinkMetrics
from monitoring.store import Store

log = logging.getLogger("monitoring")


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def open_redis(settings: CaptureSettings) -> Redis:
    password = settings.redis_password
    return Redis.from_url(
        settings.redis_url,
        username=settings.redis_username,
        password=password.get_secret_value() if password else None,
        # a blocking read waits block_ms: the socket deadline is that plus the command's own
        socket_timeout=settings.redis_timeout_s + settings.block_ms / 1000,
        socket_connect_timeout=settings.redis_timeout_s,
    )


def run_sink(settings: CaptureSettings, stop: threading.Event) -> None:
    registry = CollectorRegistry()
    server, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)
    redis = open_redis(settings)
    try:
        log.info(
            "capture sink: %s group %s as %s -> %s", settings.stream, settings.group,
            settings.consumer, settings.store_url,
        )  # fmt: skip
        Sink(settings, redis, Store(settings.store_url), SinkMetrics(registry)).run(stop)
    finally:
        redis.close()
        server.shutdown()


def run_monitor(settings: MonitorSettings, stop: threading.Event) -> None:
    registry = CollectorRegistry()
    server, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)
    try:
        log.info("monitor: %s every %.0f s", settings.store_url, settings.interval_s)
        Monitor(settings, Store(settings.store_url), registry).run(stop)
    finally:
        server.shutdown()
