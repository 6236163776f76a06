"""The rollout controller pointed at the local stack: its Redis, its Triton, its repository.

``ROLLOUT_*`` settings that are set win (another Redis, several Tritons); what is not set comes
from the running stack's state file. The rollouts' state is copied to ``HOME/rollouts/``.
"""

from __future__ import annotations

from pathlib import Path

from deploy.local.errors import StackNotRunningError
from deploy.local.settings import StackSettings
from deploy.local.stack import read_service, read_state
from rollout.controller import Controller, Say
from rollout.settings import RolloutSettings


def for_stack(stack: StackSettings, settings: RolloutSettings) -> RolloutSettings:
    """``settings`` with the running stack's addresses where they are not set."""
    update: dict[str, object] = {}
    if not settings.triton_http_urls:
        triton = read_state(stack)
        if triton is None:
            raise StackNotRunningError(
                "no stack is running (`tritonstack up`), and ROLLOUT_TRITON_HTTP_URLS is not set"
            )
        update["triton_http_urls"] = [f"{triton.host}:{triton.http_port}"]
        if settings.repository is None:
            update["repository"] = Path(triton.model_repository)
    if settings.redis_url is None:
        redis = read_service(stack, "redis")
        if redis is None:
            raise StackNotRunningError(
                "the stack runs without Redis, which the gateways read their routes from "
                "(`TRITONSTACK_REDIS=true tritonstack up`), and ROLLOUT_REDIS_URL is not set"
            )
        update["redis_url"] = redis.url
    if settings.state_dir is None:
        update["state_dir"] = stack.home / "rollouts"
    return settings.model_copy(update=update) if update else settings


def controller(settings: RolloutSettings, say: Say | None = None) -> Controller:
    """A controller for ``settings`` (completed by ``for_stack`` or set in full)."""
    return Controller.from_settings(settings, say)
