"""Reliability suite helpers: a closed-loop async load generator and the figures it reports.

Every scenario records its figures with the ``figures`` fixture; at the end of the session they
are printed and written as JSON + Markdown to ``TRITONSTACK_RELIABILITY_REPORT`` (a path stem;
`make reliability` points it at benchmarks/results/), default ``.tritonstack/reliability``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from gateway.tenants import TenantConfig, hash_key
from tests.fixtures_gateway import TENANTS

ROOT = Path(__file__).resolve().parents[2]
_FIGURES: dict[str, dict[str, Any]] = {}
_TIMINGS = (
    "Each from the fault (the kill, the SIGCONT of the stalled stub), except "
    "`test_triton_killed_mid_load_fails_fast_and_recovers`'s time_to_recover_ms: from the "
    "moment the test started Triton again by hand (no supervisor there)."
)

# -- tenants of the attack scenarios (merged over the shared test tenants) -------------------------
HONEST_KEY = "ts_honest-key-for-tests-0123456789abcdef"  # every model, no practical limit
ATTACKER_KEY = "ts_attacker-key-for-tests-0123456789abcd"  # minilm only, no practical limit
TINY_A_KEY = "ts_tiny-a-key-for-tests-0123456789abcdef"  # burst 2, no refill during a test
TINY_B_KEY = "ts_tiny-b-key-for-tests-0123456789abcdef"  # the same, another bucket
EXHAUSTED_KEY = "ts_exhausted-key-for-tests-0123456789ab"  # the attacker over its limit
WEIGHTED_KEY = "ts_weighted-key-for-tests-0123456789abcd"  # burst 300 items, no refill
NARROW_KEY = "ts_narrow-key-for-tests-0123456789abcdef"  # 2 requests in flight
NOMODELS_KEY = "ts_nomodels-key-for-tests-0123456789abc"  # no `models` given
SLOW = 0.001  # rate_per_s: one item per 1,000 s, so nothing refills during a test
ATTACK_TENANTS = {
    **TENANTS,
    "honest": TenantConfig(
        key_sha256=[hash_key(HONEST_KEY)], models=["*"], rate_per_s=1e9, burst=10**9,
        max_inflight=10_000,
    ),
    "attacker": TenantConfig(
        key_sha256=[hash_key(ATTACKER_KEY)], models=["minilm"], rate_per_s=1e9, burst=10**9,
        max_inflight=10_000,
    ),
    "tiny_a": TenantConfig(key_sha256=[hash_key(TINY_A_KEY)], models=["*"], rate_per_s=SLOW,
                           burst=2),
    "tiny_b": TenantConfig(key_sha256=[hash_key(TINY_B_KEY)], models=["minilm"],
                           rate_per_s=SLOW, burst=2),
    "exhausted": TenantConfig(key_sha256=[hash_key(EXHAUSTED_KEY)], models=["*"],
                              rate_per_s=SLOW, burst=2),
    "weighted": TenantConfig(key_sha256=[hash_key(WEIGHTED_KEY)], models=["*"],
                             rate_per_s=SLOW, burst=300),
    "narrow": TenantConfig(key_sha256=[hash_key(NARROW_KEY)], models=["*"], rate_per_s=1e9,
                           burst=10**9, max_inflight=2),
    "nomodels": TenantConfig(key_sha256=[hash_key(NOMODELS_KEY)]),
}  # fmt: skip
ATTACK_TENANTS_JSON = json.dumps({name: t.model_dump() for name, t in ATTACK_TENANTS.items()})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process' resident memory (``VmRSS``) or its high-water mark (``VmHWM``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def reset_high_water_mark(pid: int) -> None:
    """Start ``VmHWM`` afresh (``clear_refs`` 5, Linux 4.0+; the process must be ours)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Outcome:
    started: float  # monotonic seconds
    finished: float
    status: int | str  # HTTP status, or the exception class when no answer came
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: bytes = b""

    @property
    def latency_s(self) -> float:
        return self.finished - self.started


Send = Callable[[aiohttp.ClientSession, int], Awaitable[aiohttp.ClientResponse]]


async def drive(
    base_url: str,
    send: Callable[[aiohttp.ClientSession, int], Any],
    *,
    clients: int,
    requests_per_client: int | None = None,
    until: Callable[[], bool] | None = None,
    timeout_s: float = 30.0,
) -> list[Outcome]:
    """``clients`` concurrent loops; each sends until its quota is used or ``until()`` is true.

    ``send(session, i)`` returns the context manager of one request (``session.post(...)``).
    A request that gets no HTTP answer is recorded with the exception's class name.
    """
    outcomes: list[Outcome] = []
    counter = 0
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:

        async def loop() -> None:
            nonlocal counter
            done = 0
            while (requests_per_client is None or done < requests_per_client) and not (
                until and until()
            ):
                counter += 1
                started = time.monotonic()
                try:
                    async with send(session, counter) as response:
                        body = await response.read()
                        outcome = Outcome(
                            started,
                            time.monotonic(),
                            response.status,
                            {k.lower(): v for k, v in response.headers.items()},
                            body,
                        )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcome = Outcome(started, time.monotonic(), type(exc).__name__)
                outcomes.append(outcome)
                done += 1

        await asyncio.gather(*(loop() for _ in range(clients)))
    return outcomes


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    latencies = np.array([o.latency_s for o in outcomes]) * 1000 if outcomes else np.zeros(1)
    return {
        "sent": len(outcomes),
        "by_status": dict(sorted(Counter(str(o.status) for o in outcomes).items())),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "max_ms": round(float(latencies.max()), 1),
    }


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """This scenario's figures (kept only when they were recorded)."""
    recorded: dict[str, Any] = {}
    yield recorded
    if recorded:
        _FIGURES[request.node.name] = recorded


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, values in _FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(values)}")
    stem = Path(
        os.environ.get("TRITONSTACK_RELIABILITY_REPORT", ROOT / ".tritonstack" / "reliability")
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{_cpu_model()}, {os.cpu_count()} CPU cores, no GPU, {platform.platform()}, Python "
        f"{platform.python_version()}; clients, gateway, Redis and Triton on the same machine"
    )
    note = os.environ.get("TRITONSTACK_RELIABILITY_NOTE", "")  # e.g. "shared with other work"
    data = {"date": date.today().isoformat(), "machine": machine, "scenarios": _FIGURES}
    if note:
        data["note"] = note
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Reliability and security figures",
        "",
        f"Machine: {machine}. Command: `make reliability` (the same tests run in `make test`).",
        *(["", f"Note: {note}."] if note else []),
        "",
        "| scenario | figures |",
        "|---|---|",
    ]
    for name, values in _FIGURES.items():
        lines.append(f"| {name} | {json.dumps(values).replace('|', '/')} |")
    timings = [
        (name, key, value)
        for name, values in _FIGURES.items()
        for key, value in values.items()
        if key.startswith("time_to_") and value is not None
    ]
    if timings:  # each as its test measures it (from the kill, the SIGCONT, Triton back)
        lines += [
            "",
            "## Time to detect and recover",
            "",
            _TIMINGS,
            "",
            "| scenario | figure | ms |",
        ]
        lines += ["|---|---|---:|", *(f"| {n} | {k} | {v:g} |" for n, k, v in timings)]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    terminalreporter.write_line(f"written: {stem}.json, {stem}.md")
