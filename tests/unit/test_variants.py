"""Precision variants of the exported MiniLM: made, judged against PyTorch, rejected when out of
budget, timed, and the fastest passing one chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.pipeline import ExportResult
from export.spec import ModelSpec
from export.status import Status
from export.variants import Budgets, Variant, build_variants, check_variant, fastest, make_variant
from export.verify import ParityCase

CASES = [ParityCase(2, 9), ParityCase(4, 33)]


@pytest.fixture(scope="module")
def fp32_onnx(minilm_export: ExportResult) -> Path:
    assert minilm_export.version_dir is not None
    return minilm_export.version_dir / "model.onnx"


@pytest.fixture(scope="module")
def int8(fp32_onnx: Path, minilm_spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = make_variant(Variant.INT8, fp32_onnx, tmp_path_factory.mktemp("int8"), minilm_spec)
    assert made.ok, made.reason
    assert made.artefact is not None
    return made.artefact


def test_int8_per_channel_passes_its_cosine_budget(int8: Path, minilm_spec: ModelSpec) -> None:
    result = check_variant(Variant.INT8, int8, minilm_spec, Budgets(), seed=1, cases=CASES)
    assert result.ok, result.reason
    assert 0.97 <= result.metrics["min_cosine"] < 1.0  # close, but not fp32-exact


def test_int8_outside_a_strict_budget_is_rejected_with_the_miss(
    int8: Path, minilm_spec: ModelSpec
) -> None:
    strict = Budgets(int8=0.99999)
    result = check_variant(Variant.INT8, int8, minilm_spec, strict, seed=1, cases=CASES)
    assert result.status is Status.FAILED
    assert "missed by" in result.reason and "0.99999" in result.reason
    assert result.metrics["passed"] is False


def test_variants_are_built_timed_and_the_fastest_passing_one_chosen(
    fp32_onnx: Path, minilm_spec: ModelSpec, tmp_path: Path
) -> None:
    results = build_variants(
        minilm_spec, fp32_onnx, tmp_path, (Variant.FP32, Variant.INT8),
        Budgets(int8=0.999999), seed=2, measure_s=0.2, batches=(8,),
    )  # fmt: skip
    by_name = {r.variant: r for r in results}
    assert by_name[Variant.FP32].ok and by_name[Variant.FP32].items_per_s[8] > 0
    assert not by_name[Variant.INT8].ok  # out of this (strict) budget: never timed or served
    assert by_name[Variant.INT8].items_per_s == {}
    chosen = fastest(results, batch=8)
    assert chosen is not None and chosen.variant is Variant.FP32
