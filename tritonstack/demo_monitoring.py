"""The demo's last step: a drift report of its own traffic.

The driver ranker's reference is its Feast training window (``monitoring.reference``); the
demo then scores every active driver through the gateway a few times (captured, as every
request of the local stack), reports an outcome for each score drawn from the generator's own
label model (``features.data.label_logit``: what a driver would have done), waits for the
capture sink to store it all, and writes the report: drift of the features and the prediction,
live AUC from the feedback.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from deploy.local.settings import StackSettings
from features.data import label_logit
from features.settings import FeatureSettings
from monitoring import reference, report
from monitoring.accuracy import live_accuracy
from monitoring.drift import compare
from monitoring.errors import MonitoringError
from monitoring.settings import MonitorSettings
from monitoring.store import Store
from tritonstack.console import styled

MODEL = "driver_ranker"
ROUNDS = 3


def _active_drivers(features: FeatureSettings) -> list[int]:
    manifest = json.loads((features.data_dir / "manifest.json").read_text())
    return [int(d) for d in manifest["drivers"]["active"]]


def _traffic(url: str, key: str, drivers: list[int], seed: int = 0) -> tuple[int, int]:
    """Score ``drivers`` ROUNDS times (cache bypassed) and report an outcome for each score;
    returns (rows scored, outcomes recorded)."""
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {key}"}
    rows = outcomes = 0
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(ROUNDS):
            answer = _post(client, "/v1/score", {"entity_ids": drivers, "include_features": True},
                           {"Cache-Control": "no-cache"})  # fmt: skip
            request_id = answer.headers["X-Request-Id"]
            for score in answer.json()["scores"]:
                f = score["features"]
                logit = label_logit(*(np.array([f[k]]) for k in
                                      ("conv_rate", "acc_rate", "avg_daily_trips")))  # fmt: skip
                accepted = float(rng.random() < 1 / (1 + np.exp(-logit[0])))
                body = {"request_id": request_id, "entity_id": score["entity_id"],
                        "outcome": accepted}  # fmt: skip
                outcomes += _post(client, "/v1/feedback", body).status_code == 202
            rows += len(drivers)
    return rows, outcomes


def _post(client: httpx.Client, path: str, body: object, headers: dict[str, str] | None = None
          ) -> httpx.Response:  # fmt: skip
    """POST, waiting out the development tenant's rate limit (429 + Retry-After)."""
    for _ in range(20):
        response = client.post(path, json=body, headers=headers)
        if response.status_code != 429:
            response.raise_for_status()
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))
    response.raise_for_status()
    return response


def _stored(store: Store, since: datetime) -> int:
    table = store.read("inferences", MODEL, since, datetime.now(UTC))
    return 0 if table is None else table.num_rows


def drift_report(console: Console, settings: StackSettings, url: str, key: str) -> Path | None:
    """Step 7; the report's index.html, or None when it could not be made (printed why)."""
    features = FeatureSettings()
    store = Store(str(settings.capture_store))
    repository = settings.model_repository.absolute()
    version = max((p.name for p in (repository / MODEL).iterdir() if p.name.isdigit()), key=int)
    started = datetime.now(UTC) - timedelta(seconds=1)
    try:
        with console.status("7. reference: the driver ranker's Feast training window"):
            spec, table = reference.from_training(features, repository / MODEL / version /
                                                  "model.onnx", version)  # fmt: skip
            reference.save(store, spec, table)
        rows, outcomes = _traffic(url, key, _active_drivers(features))
        deadline = time.monotonic() + 60
        while _stored(store, started) < rows and time.monotonic() < deadline:
            time.sleep(0.5)  # the sink lingers ~2 s for a fuller part
        settings_ = MonitorSettings(min_rows=min(100, rows), min_labels=10)
        end = datetime.now(UTC)
        current = store.read("inferences", MODEL, started, end, version)
        if current is None:
            raise MonitoringError("the capture sink stored none of the demo's traffic")
        result = compare(spec, table, current, start=started, end=end, version=version,
                         settings=settings_)  # fmt: skip
        accuracy = live_accuracy(store, MODEL, end, window_s=(end - started).total_seconds(),
                                 delay_s=0, spec=spec)  # fmt: skip
    except (MonitoringError, httpx.HTTPError, OSError, KeyError) as exc:
        console.print(styled("7. drift report failed", "red", f": {exc}"))
        return None
    folder = settings.home.absolute() / "reports" / f"demo-drift-{end:%Y%m%dT%H%M%S}"
    index = report.write(result, accuracy, folder)
    title = (
        f"7. drift of the demo's own traffic ({rows} scored drivers, {outcomes} outcomes) "
        f"vs the training window ({result.reference_rows} rows)"
    )
    out = Table(title=title)
    for column in ("feature", "method", "value", "threshold", ""):
        out.add_column(column)
    for s in result.scores:
        limit = "" if s.threshold != s.threshold else f"{s.threshold:.3g}"
        out.add_row(s.feature, s.method, f"{s.value:.3g}", limit, "DRIFT" if s.drifted else "ok")
    console.print(out)
    for a in accuracy:
        auc = "n/a" if a.auc is None else f"{a.auc:.3f}"
        console.print(f"   live accuracy v{a.version}: AUC {auc}, log-loss {a.logloss:.3f} "
                      f"over {a.labels} outcomes")  # fmt: skip
    console.print(f"   report: {index}", soft_wrap=True, highlight=False)
    return index
