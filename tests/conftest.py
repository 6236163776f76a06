"""Shared fixtures: the Triton runtime, a freshly exported MiniLM repository, a real Triton."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from deploy.local import TritonRuntime, TritonServer
from deploy.local.redis import RedisServer
from deploy.local.settings import StackSettings
from export.ensemble import write_text_pipeline
from export.model_config import load_config
from export.pipeline import ExportResult, export_model
from export.spec import ModelSpec
from export.variants import Variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
# session fixtures of the feature store (Feast + stores + driver_ranker) and of the gateway
pytest_plugins = ["tests.fixtures_features", "tests.fixtures_gateway"]


@pytest.fixture(scope="session")
def runtime() -> TritonRuntime:
    """The Triton runtime environment made by `make setup` (a missing one fails, never skips)."""
    return TritonRuntime((ROOT / StackSettings().runtime_dir).resolve())


@pytest.fixture(scope="session")
def minilm_spec() -> ModelSpec:
    from export.models import minilm

    return minilm.load()


@pytest.fixture(scope="session")
def minilm_export(tmp_path_factory: pytest.TempPathFactory, minilm_spec: ModelSpec) -> ExportResult:
    """MiniLM exported from nothing into a fresh repository, once per test session.

    fp32 only: the suite compares served vectors with sentence-transformers at 1e-4; the
    variant choice is tested on its own (tests/integration/test_byo_export.py)."""
    base = tmp_path_factory.mktemp("export")
    result = export_model(
        minilm_spec, base / "model_repository", build_dir=base / "build", variants=(Variant.FP32,)
    )
    assert result.ok, result.failure
    return result


@pytest.fixture(scope="session")
def model_repository(minilm_export: ExportResult, minilm_spec: ModelSpec) -> Path:
    """The exported repository: MiniLM plus its text pipeline (minilm_tokenizer, minilm_text).

    ``write_text_pipeline`` is idempotent, so this stays right once ``export_model`` writes the
    pipeline itself.
    """
    assert minilm_export.version_dir is not None
    repository = minilm_export.version_dir.parent.parent
    encoder = load_config(repository / minilm_spec.name / "config.pbtxt")
    step = write_text_pipeline(
        repository,
        encoder,
        minilm_export.version_dir / "tokenizer.json",
        max_length=minilm_spec.max_length,
    )
    assert step.ok, step.reason
    return repository


@pytest.fixture(scope="session")
def tokenizer_json(minilm_export: ExportResult) -> Path:
    assert minilm_export.version_dir is not None
    return minilm_export.version_dir / "tokenizer.json"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_json: Path) -> Tokenizer:
    """The model's own tokenizer, unpadded and untruncated: what the text pipeline must match."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.no_truncation()
    return tok


@pytest.fixture(scope="session")
def triton(
    runtime: TritonRuntime, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """A real tritonserver on free loopback ports serving the exported MiniLM."""
    server = TritonServer(
        runtime, model_repository, work_dir=tmp_path_factory.mktemp("triton"), startup_timeout_s=120
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (Debian's) on a free loopback port, no persistence."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def copy_model(source_repository: Path, target_repository: Path, name: str = "minilm") -> Path:
    """Copy one model (config + versions) into another repository; returns its directory."""
    target = target_repository / name
    shutil.copytree(source_repository / name, target)
    return target
