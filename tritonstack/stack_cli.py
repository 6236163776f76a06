"""``tritonstack up | down | status | logs``: the local stack's lifecycle (deploy/local).

They behave like Compose and systemd: ``up`` on a running stack starts nothing and says since
when it runs (and refuses settings that differ from it); ``down`` with nothing running exits 0;
``status`` exits 3 when no stack runs (systemd's and LSB's "not running"), so scripts can test
it, and says what to run.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from deploy.local import stack
from deploy.local.errors import DeployError
from deploy.local.gateway import curl_examples
from deploy.local.logs import LOG_SERVICES, follow, log_file
from deploy.local.process import log_tail
from deploy.local.settings import StackSettings
from tritonstack.console import console, err, fail
from tritonstack.models_cli import models_table, reload

NOT_RUNNING = 3  # `status` with no running stack (systemctl status / LSB: "not running")


def up(
    http_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="0 or unset: a free port")
    ] = None,
    grpc_port: Annotated[int | None, typer.Option(min=0, max=65535)] = None,
    metrics_port: Annotated[int | None, typer.Option(min=0, max=65535)] = None,
) -> None:
    """Start the local stack (Triton, redis-server, gateway) under a supervisor, until `down`.

    A service that crashes is restarted on the same ports (`tritonstack status` shows restarts
    and their causes). On a running stack it starts nothing, and refuses other settings."""
    ports = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
    settings = StackSettings().model_copy(update={k: v for k, v in ports.items() if v is not None})
    since = stack.running_since(settings)
    try:
        with console.status("starting tritonserver, redis-server and the gateway") as shown:
            state = stack.up(settings, progress=lambda line: shown.update(f"up: {line}"))
    except DeployError as exc:
        raise fail(str(exc), cause=exc) from None
    if since is not None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        console.print(f"already running since {started}: nothing started")
    console.print(
        f"triton (pid {state.pid}): gRPC {state.grpc_url}, "
        f"HTTP http://{state.http_url}, metrics :{state.metrics_port}"
    )
    gateway = stack.read_service(settings, "gateway")
    if gateway is not None:
        console.print(f"gateway (pid {gateway.pid}): {gateway.url}")
        if since is None:
            key = stack.dev_api_key(settings) or "<key>"
            typer.echo(curl_examples(gateway.url, key, gateway.metrics or None))
    info = stack.status(settings)
    if info["models"]:
        console.print(models_table(info["models"]))
    if since is None:
        console.print("supervised: a crashed service restarts on the same ports")
    console.print("`tritonstack status` shows it, `tritonstack down` stops it")


def down() -> None:
    """Stop the supervisor and everything under it; nothing of the stack is left running.
    With nothing running it says so and exits 0 (safe to repeat)."""
    try:
        with console.status("down") as shown:

            def progress(line: str) -> None:
                shown.update(f"down: {line}")
                console.print(line, highlight=False)

            state = stack.down(StackSettings(), progress=progress)
    except DeployError as exc:
        raise fail(str(exc), cause=exc) from None
    if state is None:
        console.print("nothing to stop: no stack runs here")
    else:
        console.print("stopped: no process and no shared-memory region of the stack is left")


def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    env: Annotated[
        bool, typer.Option("--env", help='shell exports: eval "$(tritonstack status --env)"')
    ] = False,
) -> None:
    """Each service (state, health, uptime, restarts, last exit), each model (served versions,
    state, variant), addresses and dev key. Exit code 3 when no stack runs."""
    info = stack.status(StackSettings())
    gateway = info["gateway"]
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    elif env and info["running"]:
        if gateway is None:
            raise fail("this stack runs no gateway (TRITONSTACK_GATEWAY=false)")
        typer.echo(f"export TRITONSTACK_URL={shlex.quote(gateway['url'])}")
        typer.echo(f"export TRITONSTACK_KEY={shlex.quote(gateway['dev_api_key'] or '')}")
    elif info["supervisor"] is not None and not env:
        _print_status(info)
    if not info["running"]:
        err.print(info["hint"], highlight=False)
        raise typer.Exit(NOT_RUNNING)


def _print_status(info: dict[str, Any]) -> None:
    supervisor = info["supervisor"]
    console.print(
        f"supervisor pid {supervisor['pid']}: {supervisor['phase']}"
        + (f" - {supervisor['error']}" if supervisor["error"] else ""),
        highlight=False,
    )
    table = Table()
    columns = ("service", "state", "health", "pid", "uptime", "restarts", "last exit", "address")
    for column in columns:
        table.add_column(column)
    for name in ("triton", "redis", "gateway", "capture", "monitor"):
        entry = info[name]
        if entry is None:
            continue
        last = entry["last_exit"]
        uptime = entry["uptime_s"]
        table.add_row(
            name,
            entry["state"] + (f" ({entry['message']})" if entry["message"] else ""),
            ("ready" if entry.get("ready") else entry["health"]),
            str(entry["pid"] or "-"),
            f"{uptime:.0f} s" if uptime is not None else "-",
            str(entry["restarts"]),
            f"{last['cause']} ({last['ago_s']:.0f} s ago)" if last else "-",
            entry.get("grpc") or entry.get("url") or "",
        )
    console.print(table)
    if info["models"]:
        console.print(f"models of {info['triton']['model_repository']}:", highlight=False)
        console.print(models_table(info["models"], ""))
    gateway = info["gateway"]
    if gateway is not None and gateway.get("dev_api_key"):
        console.print(f"dev API key: {gateway['dev_api_key']}  (docs: {gateway['docs']})")
    console.print("logs: tritonstack logs triton|redis|gateway|supervisor [-f]")


def logs(
    service: Annotated[str, typer.Argument(help=" | ".join(LOG_SERVICES))],
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new lines")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="lines of the tail")] = 50,
    previous: Annotated[
        bool, typer.Option(help="the log of the process before the last restart")
    ] = False,
) -> None:
    """A service's log (Triton, Redis, gateway, supervisor); -f follows it across restarts."""
    try:
        path = log_file(StackSettings(), service, previous)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not path.exists() and not follow_:
        raise fail(f"no log at {path} (has `tritonstack up` run here?)")
    if lines:
        text = log_tail(path, lines)
        typer.echo(text, nl=bool(text))
    if follow_:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends following, not an error
            follow(path, _write)


def _write(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add the lifecycle commands to the ``tritonstack`` app."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(reload)
    app.command()(logs)
