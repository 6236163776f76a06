"""``tritonstack rollout start | status | promote | abort``: model versions rolled out through
the gateway (the controller is ``rollout/``; the local stack's addresses come from
``deploy.local.rollouts``).

``start`` drives the rollout in the foreground until it is promoted (exit 0) or rolled back
(exit 1); Ctrl-C leaves it at its current step (the gateways keep routing), and ``start`` with
the same model and version resumes it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated, Any

import typer

from deploy.local import rollouts
from deploy.local.errors import DeployError
from deploy.local.settings import StackSettings
from export.reader import rollout_records
from rollout.budget import Budget
from rollout.controller import Controller
from rollout.errors import RolloutError
from rollout.settings import RolloutSettings
from rollout.state import RolloutState
from tritonstack.console import console, fail, int_list
from tritonstack.rollout_view import print_history, print_state

rollout_app = typer.Typer(
    help="Roll a model version out through the gateway: shadow, canary steps, then promote or "
    "roll back, judged from the gateways' figures.",
    no_args_is_help=True,
)
Model = Annotated[str, typer.Option("--model", "-m", help="the Triton model, e.g. minilm")]


def _say(line: str) -> None:
    console.print(f"{time.strftime('%H:%M:%S')}  {line}", highlight=False)


def _controller(**update: Any) -> Controller:
    try:
        settings = rollouts.for_stack(StackSettings(), RolloutSettings())
        return rollouts.controller(settings.model_copy(update=update), _say)
    except (DeployError, RolloutError) as exc:
        raise fail(str(exc), cause=exc) from None


def _ended(state: RolloutState) -> None:
    if state.phase == "promoted":
        console.print(f"promoted: {state.model} version {state.candidate} serves every caller")
        return
    if state.phase == "aborted":
        failed = state.result.get("candidate_failed_requests", 0)
        console.print(
            f"rolled back: {state.model} version {state.stable} serves every caller "
            f"({state.reason}; the candidate failed {failed} requests)",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(
        f"left at {state.phase}: the gateways keep this step's routes; "
        f"`tritonstack rollout start -m {state.model} -v {state.candidate}` resumes it"
    )


@rollout_app.command()
def start(
    model: Model,
    version: Annotated[str, typer.Option("--version", "-v", help="the candidate version")],
    shadow: Annotated[bool, typer.Option(help="first compare it in shadow")] = False,
    steps: Annotated[str | None, typer.Option(help="canary weights, e.g. 10,50,100")] = None,
    step_seconds: Annotated[float | None, typer.Option(min=0.1)] = None,
    shadow_sample: Annotated[float | None, typer.Option(min=0.001, max=1.0)] = None,
    metric: Annotated[
        str | None, typer.Option(help="cosine | top1 | rel_l2 (with --budget)")
    ] = None,
    budget: Annotated[float | None, typer.Option(help="instead of the export reports'")] = None,
) -> None:
    """Start (or resume) a rollout of VERSION and drive it until it is promoted or rolled back."""
    update: dict[str, Any] = {}
    if steps is not None:
        update["steps"] = RolloutSettings(steps=int_list(steps, "--steps")).steps
    if step_seconds is not None:
        update["step_seconds"] = step_seconds
    if shadow_sample is not None:
        update["shadow_sample"] = shadow_sample
    controller = _controller(**update)
    given = None
    if budget is not None:
        if metric not in ("cosine", "top1", "rel_l2"):
            raise fail("--budget needs --metric cosine, top1 or rel_l2")
        given = Budget(metric, budget, "given on the command line")  # type: ignore[arg-type]
    try:
        state = controller.start(model, version, shadow=shadow, budget=given)
        _say(
            f"rollout {state.id}: {model} {state.stable} -> {state.candidate}; budget "
            f"{state.budget['metric']} {state.budget['budget']:.8g}"
        )
        state = controller.drive(model)
    except RolloutError as exc:
        raise fail(str(exc), cause=exc) from None
    except KeyboardInterrupt:
        state = controller.store.load(model) or state
    _ended(state)


def _request(model: str, what: str) -> None:
    try:
        state = _controller().request(model, what)
    except RolloutError as exc:
        raise fail(str(exc), cause=exc) from None
    _ended(state)


@rollout_app.command()
def promote(model: Model) -> None:
    """Give the candidate every caller now (the remaining steps are skipped)."""
    _request(model, "promote")


@rollout_app.command()
def abort(model: Model) -> None:
    """Send every caller back to the stable version and unload the candidate."""
    _request(model, "abort")


@rollout_app.command()
def status(
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The rollout in progress and the history (Redis, and the export reports)."""
    controller = _controller()
    store = controller.store
    try:
        names = [model] if model else store.models()
        found = {n: store.load(n) for n in names}
        history = {n: [asdict(s) for s in store.history(n)] for n in names}
    except RolloutError as exc:
        raise fail(str(exc), cause=exc) from None
    repository = controller.settings.repository
    reports = {n: rollout_records(repository, n) if repository else [] for n in names}
    if as_json:
        doc = {
            n: {
                "current": asdict(s) if s else None,
                "driver": store.holder(n),
                "history": history[n],
                "reports": reports[n],
            }
            for n, s in found.items()
        }
        console.print_json(json.dumps(doc, default=str))
        return
    if not names:
        console.print("no rollouts yet: `tritonstack rollout start --model M --version V`")
    for name, state in found.items():
        if state is not None:
            print_state(state, store.holder(name))
        print_history(name, reports[name] or history[name])
