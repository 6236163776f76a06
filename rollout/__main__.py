"""``python -m rollout``: the controller where ``tritonstack`` is not installed (a Kubernetes
Job in the rollout image), configured by ``ROLLOUT_*`` variables only.

    python -m rollout start --model minilm --version 2 [--shadow] [--metric M --budget B]
    python -m rollout promote|abort|status --model minilm

``start`` drives the rollout to its end: exit 0 promoted, 1 rolled back, 2 on a refusal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from rollout.budget import Budget
from rollout.controller import Controller
from rollout.errors import RolloutError
from rollout.settings import RolloutSettings


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout", description=__doc__)
    parser.add_argument("command", choices=["start", "promote", "abort", "status"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", help="the candidate (start)")
    parser.add_argument("--shadow", action="store_true", help="compare it in shadow first")
    parser.add_argument("--metric", choices=["cosine", "top1", "rel_l2"])
    parser.add_argument("--budget", type=float, help="instead of the export reports'")
    args = parser.parse_args(argv)
    try:
        control = Controller.from_settings(RolloutSettings(), _say)
        if args.command == "status":
            state = control.store.load(args.model)
            print(json.dumps(asdict(state) if state else None, indent=2, default=str))
            return 0
        if args.command == "start":
            if not args.version:
                parser.error("start needs --version")
            given = None
            if args.budget is not None:
                if args.metric is None:
                    parser.error("--budget needs --metric")
                given = Budget(args.metric, args.budget, "given on the command line")
            state = control.start(args.model, args.version, shadow=args.shadow, budget=given)
            _say(f"rollout {state.id}: {state.stable} -> {state.candidate}, budget {state.budget}")
            state = control.drive(args.model)
        else:
            state = control.request(args.model, args.command)
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _say(f"{state.phase}: {state.reason}")
    return 0 if state.phase == "promoted" else 1


if __name__ == "__main__":
    sys.exit(main())
