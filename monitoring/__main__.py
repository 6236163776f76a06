"""``python -m monitoring capture|monitor``: run the capture sink or the monitor."""

from __future__ import annotations

import logging
import os
import sys

from pydantic import ValidationError

from monitoring.service import run_monitor, run_sink, stop_on_signals
from monitoring.settings import CaptureSettings, MonitorSettings


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if argv not in (["capture"], ["monitor"]):
        print("usage: python -m monitoring capture|monitor", file=sys.stderr)
        return 2
    try:
        # secrets as files (Compose): CAPTURE_SECRETS_DIR/capture_redis_password
        secrets = os.environ.get("CAPTURE_SECRETS_DIR") or None
        settings = (
            CaptureSettings(_secrets_dir=secrets) if argv == ["capture"] else MonitorSettings()
        )
    except ValidationError as exc:
        print(f"monitoring: invalid settings: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    if isinstance(settings, CaptureSettings):
        run_sink(settings, stop)
    else:
        run_monitor(settings, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
