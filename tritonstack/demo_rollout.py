"""The demo's rollout (step 6): a second MiniLM version goes shadow → 50 % → 100 % through the
gateway while a few callers embed text, and is promoted (or rolled back, and the demo fails).

The candidate is the newest version on disk when Triton does not serve it yet (an export made
with ``--no-load``), else the served version published again as the next one (hard links:
``export.repository.copy_version``). Steps are short (3 s) and judged on small samples: the
mechanism on show, not a release decision; `tritonstack rollout start` uses the real defaults.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from rich.console import Console

from deploy.local import rollouts, stack
from deploy.local.models import model_status
from deploy.local.settings import StackSettings
from export.repository import copy_version, write_latest_policy
from rollout.errors import RolloutError
from rollout.settings import RolloutSettings
from tritonstack.console import styled
from tritonstack.rollout_view import print_state

WORDS = ("triton", "gateway", "canary", "shadow", "version", "model", "rollout", "embedding")
DEMO = RolloutSettings(
    steps=[50, 100],
    step_seconds=3,
    shadow_sample=1.0,
    check_interval_s=0.5,
    min_requests=10,
    min_shadow_rows=10,
)


# the callers together stay under the development tenant's 200 items/s (deploy/local/gateway.py)
CALLS_PER_S = 40.0


@contextmanager
def _callers(url: str, key: str, seen: Counter[str], threads: int = 4) -> Iterator[None]:
    """``threads`` callers embedding short texts, each as 20 users (X-Routing-Key), each at most
    ``CALLS_PER_S``; a 429 is counted and its ``Retry-After`` honoured, as a client should."""
    stop = threading.Event()

    def call(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.wait(1 / CALLS_PER_S):
                text = " ".join(rng.choice(WORDS) for _ in range(8))
                headers = {
                    "Authorization": f"Bearer {key}",
                    "Cache-Control": "no-cache",
                    "X-Routing-Key": f"user-{index}-{rng.randrange(20)}",
                }
                try:
                    answer = client.post(
                        "/v1/embeddings", json={"model": "minilm", "input": text}, headers=headers
                    )
                    seen[f"{answer.status_code} v{answer.headers.get('x-model-version', '?')}"] += 1
                    if answer.status_code == 429:
                        stop.wait(float(answer.headers.get("retry-after", "1")))
                except httpx.HTTPError:
                    seen["no answer"] += 1

    workers = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=15)


def rollout_step(console: Console, settings: StackSettings, url: str, key: str) -> bool:
    triton = stack.read_state(settings)
    http_url = f"{triton.host}:{triton.http_port}" if triton else None
    found = {m.name: m for m in model_status(settings.model_repository, http_url)}
    served = [str(v) for v in found["minilm"].served_versions] if "minilm" in found else []
    if len(served) != 1:
        console.print(styled("6. rollout skipped", "yellow", f": minilm serves {served}"))
        return True
    on_disk = found["minilm"].on_disk if "minilm" in found else []
    if on_disk and max(on_disk) > int(served[0]):
        candidate = str(max(on_disk))
        how = f"version {candidate} (exported, not served yet)"
    else:
        candidate = copy_version(settings.model_repository, "minilm", int(served[0])).name
        how = f"version {candidate}, version {served[0]} published again (hard links)"
    console.print(f"6. rollout: minilm {served[0]} -> {how}: shadow, 50 %, 100 %")
    seen: Counter[str] = Counter()

    def say(line: str) -> None:
        console.print(f"   {time.strftime('%H:%M:%S')}  {line}", highlight=False)

    try:
        controller = rollouts.controller(rollouts.for_stack(settings, DEMO), say)
        with _callers(url, key, seen):
            controller.start("minilm", candidate, shadow=True)
            state = controller.drive("minilm")
    except RolloutError as exc:
        console.print(styled("6. rollout failed", "red", f": {exc}"))
        return False
    print_state(state, None)
    if state.phase == "promoted":
        # the candidate is the newest version on disk: `latest 1` serves the same one, and the
        # tracked config is left as a fresh clone has it (a real rollout keeps its pin)
        write_latest_policy(settings.model_repository, "minilm")
    answers = ", ".join(f"{k}: {n}" for k, n in sorted(seen.items()))
    ok = state.phase == "promoted" and all(k.startswith("200") for k in seen)
    console.print(styled("6. rollout", "green" if ok else "red", f": {state.phase}; {answers}"))
    return ok
