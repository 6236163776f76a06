"""Model monitoring end to end against real servers: the gateway in front of the real Triton
(driver_ranker) and Redis captures every request, the capture sink (a real process) stores it,
the monitor (a real process) compares it with the Feast training window and joins the
feedback, and a real Prometheus (Debian's) scrapes the monitor and evaluates the alert rules.

Traffic from the training distribution shows no drift; traffic with conversion rates moved
raises the drift score of conv_rate past its threshold and ModelDriftDetected fires; the
outcomes clients report turn into the live AUC, equal to the AUC of the scores they got.

The rules are the one source's (deploy/monitoring/prometheus/rules), with every ``for:`` set to
0s in a copy: what the alert compares is tested here, how long it waits by promtool's cases.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from deploy.local.gateway import GatewayProcess
from deploy.local.monitoring import MonitoringProcess
from deploy.local.prometheus import RULES_DIR, PrometheusServer, host_port
from deploy.local.redis import RedisServer
from deploy.local.triton import TritonServer
from features.data import label_logit
from features.train import TrainResult, roc_auc
from monitoring import reference
from monitoring.store import Store
from tests.deploy.test_local_prometheus import wait_for
from tests.fixtures_features import FeatureEnv
from tests.fixtures_gateway import ALPHA_KEY, BETA_KEY, StartGateway

pytestmark = pytest.mark.integration
STREAM = "tritonstack:capture:e2e"
ALPHA = {"Authorization": f"Bearer {ALPHA_KEY}"}
ROWS = 8  # feature rows per request


@pytest.fixture(scope="module")
def monitored(
    tmp_path_factory: pytest.TempPathFactory,
    start_gateway: StartGateway,
    ranker_triton: TritonServer,
    redis_server: RedisServer,
    redis_features: FeatureEnv,
    sqlite_features: FeatureEnv,
    trained: TrainResult,
) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("monitoring")
    store_url = str(base / "store")
    assert trained.version_dir is not None
    spec, table = reference.from_training(
        sqlite_features.settings, trained.version_dir / "model.onnx", "1"
    )
    reference.save(Store(store_url), spec, table)
    gateway = start_gateway(
        ranker_triton.grpc_url,
        redis_server.url,
        extra_env={
            "GATEWAY_SCORING_ENABLED": "true",
            "FEATURES_STATE_DIR": str(redis_features.settings.state_dir),
            "FEATURES_REDIS_URL": str(redis_features.settings.redis_url),
            "GATEWAY_CAPTURE_ENABLED": "true",
            "GATEWAY_CAPTURE_STREAM": STREAM,
            "GATEWAY_CAPTURE_SAMPLE_RATES": '{"*": 1.0}',
            "GATEWAY_CAPTURE_FEEDBACK_MODELS": '["driver_ranker"]',
        },
    )
    sink = MonitoringProcess(
        "capture", base / "sink", store_url=store_url, redis_url=redis_server.url,
        settings={"CAPTURE_STREAM": STREAM, "CAPTURE_LINGER_S": "0.2", "CAPTURE_BLOCK_MS": "100"},
    )  # fmt: skip
    monitor = MonitoringProcess(
        "monitor", base / "monitor", store_url=store_url,
        settings={"MONITOR_INTERVAL_S": "1", "MONITOR_WINDOW_S": "600",
                  "MONITOR_MODELS": '["driver_ranker"]', "MONITOR_MIN_LABELS": "30"},
    )  # fmt: skip
    rules = base / "rules"
    rules.mkdir()
    for path in RULES_DIR.glob("*.rules.yml"):  # the same rules, without their waiting times
        text = re.sub(r"^(\s+)for: \S+$", r"\1for: 0s", path.read_text(), flags=re.M)
        (rules / path.name).write_text(text)
    with sink, monitor:
        prometheus = PrometheusServer(
            base / "prometheus", {"monitor": [host_port(monitor.metrics_url)]},
            scrape_interval_s=1.0, rule_files=sorted(rules.glob("*.rules.yml")),
        )  # fmt: skip
        with prometheus:
            yield {
                "gateway": gateway, "prometheus": prometheus, "store": Store(store_url),
                "reference": table.to_pandas(), "monitor": monitor,
                "drivers": [int(d) for d in redis_features.dataset.drivers["active"][:2]],
            }  # fmt: skip


def _send(gateway: GatewayProcess, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The rows through /v2/models/driver_ranker/infer, ROWS a request: request ids, scores."""
    ids, scores = [], []
    with httpx.Client(base_url=gateway.url, headers=ALPHA, timeout=30) as client:
        for chunk in np.array_split(rows, len(rows) // ROWS):
            tensor = {"name": "features", "datatype": "FP32", "shape": list(chunk.shape)}
            body = {"inputs": [{**tensor, "data": chunk.ravel().tolist()}]}
            answer = client.post("/v2/models/driver_ranker/infer", json=body)
            assert answer.status_code == 200, answer.text
            ids.append(answer.headers["X-Request-Id"])
            scores.append(answer.json()["outputs"][0]["data"][0])  # item 0's score
    return ids, np.array(scores)


def _query(prometheus: PrometheusServer, promql: str) -> dict[str, float]:
    return {
        ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k in ("feature", "method")):
        float(r["value"][1])
        for r in prometheus.query(promql)
    }  # fmt: skip


def test_drift_and_live_accuracy_reach_prometheus_and_the_alert_fires(
    monitored: dict[str, Any],
) -> None:
    gateway, prometheus = monitored["gateway"], monitored["prometheus"]
    columns = ["conv_rate", "acc_rate", "avg_daily_trips"]
    training = monitored["reference"][columns].to_numpy(np.float32)
    rng = np.random.default_rng(3)

    # 1. the training distribution, with outcomes drawn from the label model
    rows = training[rng.choice(len(training), 60 * ROWS, replace=False)]
    ids, scores = _send(gateway, rows)
    first = rows[::ROWS]  # item 0 of each request
    labels = (rng.random(len(first)) < 1 / (1 + np.exp(-label_logit(*first.T)))).astype(int)
    with httpx.Client(base_url=gateway.url, headers=ALPHA, timeout=30) as client:
        for request_id, label in zip(ids, labels, strict=True):
            answer = client.post("/v1/feedback", json={"request_id": request_id, "item": 0,
                                                       "outcome": int(label)})  # fmt: skip
            assert answer.status_code == 202, answer.text
    expected_auc = roc_auc(labels, scores)
    live = wait_for(
        lambda: _query(prometheus, 'tritonstack_live_auc{model="driver_ranker"}'),
        lambda seen: len(seen) == 1, 60, "a live AUC",
    )  # fmt: skip
    assert next(iter(live.values())) == pytest.approx(expected_auc, abs=1e-6)
    count = _query(prometheus, 'tritonstack_live_labels{model="driver_ranker"}')
    assert list(count.values()) == [len(ids)]
    quiet = wait_for(
        lambda: _query(prometheus, 'tritonstack_drift_score{model="driver_ranker",method="psi"}'),
        lambda seen: len(seen) == 4, 60, "PSI per feature and the prediction",
    )  # fmt: skip
    assert max(quiet.values()) < 0.2, quiet
    assert prometheus.query('ALERTS{alertname="ModelDriftDetected"}') == []

    # 2. conversion rates moved up (clipped to [0, 1]): three times as much traffic
    shifted = training[rng.choice(len(training), 180 * ROWS, replace=False)].copy()
    shifted[:, 0] = np.clip(shifted[:, 0] + 0.35, 0, 1)
    _send(gateway, shifted)
    firing = wait_for(
        lambda: prometheus.query('ALERTS{alertname="ModelDriftDetected",alertstate="firing"}'),
        lambda seen: any(a["metric"].get("feature") == "conv_rate" for a in seen), 60,
        "ModelDriftDetected firing for conv_rate",
    )  # fmt: skip
    fired = {a["metric"]["feature"] for a in firing}
    assert "acc_rate" not in fired  # the features that did not move stay quiet
    scores_now = _query(prometheus, 'tritonstack_drift_score{model="driver_ranker",method="psi"}')
    assert scores_now["feature=conv_rate,method=psi"] > 0.2


def test_feedback_is_the_tenants_own_and_says_what_is_wrong(monitored: dict[str, Any]) -> None:
    gateway = monitored["gateway"]
    first, second = monitored["drivers"]  # active drivers: fresh online features
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        score = client.post("/v1/score", headers=ALPHA, json={"entity_ids": [first, second]})
        assert score.status_code == 200, score.text
        request_id = score.headers["X-Request-Id"]
        body = {"request_id": request_id, "entity_id": second, "outcome": 1}
        ok = client.post("/v1/feedback", headers=ALPHA, json=body)
        assert ok.status_code == 202 and ok.json()["item"] == 1, ok.text
        cases = [
            (BETA_KEY, {"request_id": request_id, "entity_id": second, "outcome": 1}, 404),
            (ALPHA_KEY, {"request_id": "0" * 32, "outcome": 1}, 404),
            (ALPHA_KEY, {"request_id": request_id, "outcome": 1}, 422),  # which of the two?
            (ALPHA_KEY, {"request_id": request_id, "entity_id": -1, "outcome": 1}, 422),
            (ALPHA_KEY, {"request_id": request_id, "outcome": 7}, 422),
            (ALPHA_KEY, {"outcome": 1}, 422),
        ]
        for key, body, status in cases:
            answer = client.post("/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                                 json=body)  # fmt: skip
            assert answer.status_code == status, (body, answer.text)
            assert answer.json()["error"]["message"]
        assert client.post("/v1/feedback", json={"request_id": request_id}).status_code == 401
