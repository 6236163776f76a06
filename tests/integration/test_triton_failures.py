"""Start-up failures are reported with Triton's own log, fast, and leave nothing running."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deploy.local import TritonServer, TritonStartError
from tests.conftest import copy_model

pytestmark = pytest.mark.integration


def test_malformed_config_fails_start_with_log_tail(
    runtime, model_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    model_dir = copy_model(model_repository, repo)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 32", "max_batch_size: lots"))
    server = TritonServer(runtime, repo, work_dir=tmp_path / "w", startup_timeout_s=60)
    start = time.monotonic()
    with pytest.raises(TritonStartError) as info:
        server.start()
    assert time.monotonic() - start < 30  # failed fast: did not wait for the deadline
    message = str(info.value)
    assert "exited with code" in message and "tritonserver log (tail)" in message
    assert "Expected integer, got: lots" in info.value.log_tail  # Triton's own words
    assert "minilm" in info.value.log_tail
    assert not server.is_running()


def test_model_that_fails_to_initialize_reports_its_error(
    runtime, model_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    model_dir = copy_model(model_repository, repo)
    (model_dir / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = TritonServer(runtime, repo, work_dir=tmp_path / "w", startup_timeout_s=60)
    with pytest.raises(TritonStartError) as info:
        server.start()
    assert "failed to load 'minilm' version 1" in info.value.log_tail
    assert "INVALID_PROTOBUF" in info.value.log_tail
    assert not server.is_running()


def test_missing_repository_is_reported(runtime, tmp_path: Path) -> None:
    server = TritonServer(runtime, tmp_path / "absent", work_dir=tmp_path / "w")
    with pytest.raises(TritonStartError, match="does not exist"):
        server.start()


def test_readiness_deadline_is_enforced(runtime, model_repository: Path, tmp_path: Path) -> None:
    server = TritonServer(
        runtime, model_repository, work_dir=tmp_path / "w", startup_timeout_s=0.01
    )
    with pytest.raises(TritonStartError, match="not ready within"):
        server.start()
    assert not server.is_running()
