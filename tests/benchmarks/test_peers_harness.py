"""The side-by-side harness for real: one peer (the naive FastAPI server) and the ceiling.

Heavy peers (Ray Serve, LitServe) are not started here: `tritonstack bench peers` runs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import compare
from deploy.local.settings import StackSettings

pytestmark = pytest.mark.integration


def test_naive_peer_and_ceiling_measure_and_answer_correctly(model_repository: Path) -> None:
    result = compare.run(
        ["naive-fastapi"],
        levels=[1, 2],
        batches=[1, 4],
        seconds=0.5,
        repeats=1,
        settings=StackSettings(model_repository=model_repository),
        warmup_s=0.2,
    )
    assert {c.system for c in result.checks} == {"ceiling", "naive-fastapi"}
    assert all(c.ok for c in result.checks), result.checks
    by = {(p.target, p.concurrency): p for p in result.points}
    assert set(by) == {("naive-fastapi", 1), ("naive-fastapi", 2), ("ceiling", 1), ("ceiling", 4)}
    for p in result.points:
        assert p.requests > 0 and p.errors == 0 and p.throughput > 0 and p.p99_ms >= p.p50_ms
    assert result.commands == ["-m benchmarks.peers.naive_fastapi --port PORT"]
