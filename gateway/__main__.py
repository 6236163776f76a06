"""``python -m gateway``: run the gateway with uvicorn, configured by ``GATEWAY_*`` variables.

One process, one event loop: scale with replicas (each shares rate limits and the cache through
Redis), not with uvicorn workers (Prometheus metrics are per process).
"""

from __future__ import annotations

import logging
import os
import sys

import uvicorn
from pydantic import ValidationError

from gateway.app import create_app
from gateway.protocol import deadline_protocol
from gateway.settings import GatewaySettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        # secrets as files (Compose, Docker secrets): GATEWAY_SECRETS_DIR/gateway_redis_password
        settings = GatewaySettings(_secrets_dir=os.environ.get("GATEWAY_SECRETS_DIR") or None)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"gateway: invalid settings: {problems}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        # uvicorn's own limits: connections + requests (503 past it), idle keep-alive; the
        # deadlines to receive headers and body are ours (gateway/protocol.py)
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        http=deadline_protocol(settings.header_timeout_s, settings.body_timeout_s),
        access_log=False,
        # the standard asyncio loop, not uvloop: grpc.aio (the Triton client) was measured
        # slower under uvloop (benchmarks/README.md, "Gateway overhead")
        loop=settings.event_loop,
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
