"""A hostile client in its own process (its CPU is not the honest client's): for ``seconds``
against ``host:port`` it runs, at once,

* two loops of unauthenticated 8 MiB JSON bodies to /v1/embeddings,
* one loop of 8 MiB bodies from a tenant that is over its rate limit (``--limited-key``),
* one loop of requests for a model the tenant may not use (``--forbidden-key``),
* ``--slowloris`` connections that send half a request header and then nothing (reopened as
  the gateway closes them).

Prints what it got as JSON (answers by status, connections the gateway closed).

    python tests/reliability/_attack.py HOST PORT SECONDS --limited-key K --forbidden-key K
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

BODY_BYTES = 8 * 2**20 - 4096  # just under the gateway's default 8 MiB bound


def _json_body(size: int) -> bytes:
    item = b'"' + b"x" * 60 + b'",'
    head, tail = b'{"model":"minilm","input":[', b'"x"]}'
    return head + item * ((size - len(head) - len(tail)) // len(item)) + tail


async def _request(
    host: str, port: int, head: bytes, body: bytes, counts: Counter[str], timeout_s: float = 10
) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        counts["connect_failed"] += 1
        return
    answer = asyncio.ensure_future(reader.read(4096))
    try:
        writer.write(head)
        view = memoryview(body)
        for start in range(0, len(body), 2**16):  # stop sending once the gateway answered
            if answer.done():
                break
            writer.write(view[start : start + 2**16])
            await writer.drain()
        data = await asyncio.wait_for(asyncio.shield(answer), timeout_s)
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
        counts[status] += 1
    except (OSError, TimeoutError, IndexError):
        # the gateway answered and closed while the body was still being sent: the reset
        # discards its answer here (a refusal either way: nothing of the body was wanted)
        counts["closed_while_sending"] += 1
    finally:
        if answer.done() and not answer.cancelled():
            answer.exception()  # retrieved: no "never retrieved" noise
        else:
            answer.cancel()
        writer.close()


def _head(method: str, path: str, length: int, key: str | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", "Content-Type: application/json",
             f"Content-Length: {length}", "Connection: close"]  # fmt: skip
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _slowloris(host: str, port: int, stop: float, counts: Counter[str]) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counts["slowloris_connect_failed"] += 1
            await asyncio.sleep(0.2)
            continue
        writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nX-Pad: ")
        try:
            left = stop - time.monotonic()
            data = await asyncio.wait_for(reader.read(4096), max(left, 0.01))
            counts["slowloris_closed_by_gateway"] += 1 if not data or b" 408 " in data else 0
        except TimeoutError:
            counts["slowloris_still_open_at_end"] += 1
        except OSError:
            counts["slowloris_closed_by_gateway"] += 1
        finally:
            writer.close()


async def main(args: argparse.Namespace) -> Counter[str]:
    stop = time.monotonic() + args.seconds
    counts: Counter[str] = Counter()
    body = _json_body(BODY_BYTES)

    async def loop(head: bytes, payload: bytes) -> None:
        while time.monotonic() < stop:
            await _request(args.host, args.port, head, payload, counts)

    no_key = _head("POST", "/v1/embeddings", len(body), None)
    limited = _head("POST", "/v1/embeddings", len(body), args.limited_key)
    forbidden = _head("GET", "/v2/models/driver_ranker", 0, args.forbidden_key)
    await asyncio.gather(
        loop(no_key, body), loop(no_key, body), loop(limited, body), loop(forbidden, b""),
        *(_slowloris(args.host, args.port, stop, counts) for _ in range(args.slowloris)),
    )  # fmt: skip
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--limited-key", required=True)
    parser.add_argument("--forbidden-key", required=True)
    parser.add_argument("--slowloris", type=int, default=40)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
