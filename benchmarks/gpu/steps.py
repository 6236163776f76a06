"""The bodies of the GPU check's steps (:mod:`benchmarks.gpu.check` plans and times them).

Each returns a :class:`~export.status.StepResult`; what later steps need (models, the server)
is kept in ``run.state``.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.gpu import carry, inprocess, serve
from benchmarks.gpu.minilm import carried_word_ids, load_carried, load_references
from export.status import Status, StepResult

if TYPE_CHECKING:
    from benchmarks.gpu.check import Run


def device(run: Run) -> torch.device:
    return torch.device("cuda", 0) if run.args.device == "cuda" else torch.device("cpu")


def stage(run: Run) -> StepResult:
    problems = run.stage.problems(check_hashes=True)
    if problems:
        return StepResult("stage", Status.FAILED, reason="; ".join(problems))
    manifest = run.stage.manifest()
    metrics: dict[str, Any] = {"staged": manifest.get("created"), "model": manifest.get("model")}
    if run.args.runtime_dir is not None:
        run.state["runtime_files"] = run.args.runtime_dir
        metrics["runtime"] = f"{run.args.runtime_dir} (--runtime-dir)"
    elif not run.stage.runtime_problem():
        start = time.perf_counter()
        files = serve.runtime_files(run.stage, run.args.work)
        run.state["runtime_files"] = files
        metrics["runtime"] = str(files)
        metrics["unpack_s"] = round(time.perf_counter() - start, 2)
    return StepResult("stage", Status.OK, metrics=metrics)


def load(run: Run) -> StepResult:
    start = time.perf_counter()
    where = device(run)
    models = {}
    for dtype in ("fp32", "fp16"):
        models[dtype], word_ids = load_carried(run.stage.model_dir, dtype=dtype, device=where)
    run.state["models"], run.state["word_ids"] = models, word_ids
    run.state["references"] = load_references(run.stage.reference)
    metrics: dict[str, Any] = {
        "device": str(where),
        "word_rows": len(word_ids),
        "attention": "sdpa",
    }
    if where.type == "cuda":
        torch.cuda.synchronize(where)
        metrics["device"] = torch.cuda.get_device_name(where)
        metrics["capability"] = ".".join(map(str, torch.cuda.get_device_capability(where)))
        metrics["memory_allocated_mib"] = round(torch.cuda.memory_allocated(where) / 2**20, 1)
    return StepResult("load", Status.OK, metrics=metrics, duration_s=time.perf_counter() - start)


def parity(run: Run, dtype: str) -> StepResult:
    true, rounded = run.state["references"]
    runner = inprocess.torch_runner(run.state["models"][dtype], device(run))
    return inprocess.parity(runner, dtype, true, rounded, run.state["word_ids"], f"parity_{dtype}")


def ceiling(run: Run) -> StepResult:
    result = inprocess.ceiling(
        run.state["models"], device(run), run.state["word_ids"], run.args.seconds
    )
    run.state["ceiling_points"] = result.metrics["points"]
    return result


def ort(run: Run) -> StepResult:
    cpu_model, _ = load_carried(run.stage.model_dir, dtype="fp32", device="cpu")
    result = inprocess.ort_cuda(cpu_model, run.stage.model_dir, run.state["word_ids"],
                                run.args.seconds, run.facts.ort_providers)  # fmt: skip
    run.state.setdefault("ceiling_points", []).extend(result.metrics.get("points", []))
    return result


def release_models(run: Run) -> None:
    """Free the in-process models' GPU memory before Triton's instances take theirs."""
    run.state.pop("models", None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def triton(run: Run) -> StepResult:
    files = run.state.get("runtime_files")
    if files is None:
        return StepResult("triton", Status.SKIPPED, reason="the runtime was not unpacked")
    work = run.args.work / "triton"
    repository = run.args.work / "repository"
    kind = "gpu" if run.args.device == "cuda" else "cpu"
    names = serve.assemble_repository(
        run.stage.triton_repository / kind, run.stage.model_dir, repository, run.args.models
    )
    runtime = serve.CarriedRuntime.here(files)
    left = run.deadline - time.monotonic()
    run.state["triton_log"] = work / "tritonserver.log"
    start = time.perf_counter()
    server, failed = serve.start_server(runtime, repository, work, timeout_s=min(240.0, left - 60))
    names = [n for n in names if n not in failed]
    run.state["server"], run.state["runtime"], run.state["model_names"] = server, runtime, names
    return StepResult(
        "triton",
        Status.OK,
        reason="; ".join(f"{n} failed to load ({e}), served the others" for n, e in failed.items()),
        metrics={
            "models": serve.model_facts(server, names),
            "startup_s": round(time.perf_counter() - start, 1),
            "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0 wheel, carried)",
        },
    )


def triton_parity(run: Run, dtype: str) -> StepResult:
    served = [n for n in run.state["model_names"] if carry.MODELS.get(n, ("",))[0] == dtype]
    if not served:
        return StepResult(f"triton_parity_{dtype}", Status.SKIPPED,
                          reason=f"no {dtype} model served (--models)")  # fmt: skip
    if "references" not in run.state:  # the in-process steps did not run
        run.state["references"] = load_references(run.stage.reference)
        run.state["word_ids"] = carried_word_ids(run.stage.model_dir)
    true, rounded = run.state["references"]
    runner = serve.http_runner(run.state["server"], served[0])
    step = f"triton_parity_{dtype}"
    result = inprocess.parity(runner, dtype, true, rounded, run.state["word_ids"], step)
    result.metrics["model"] = served[0]
    return result


def perf(run: Run) -> StepResult:
    work = run.args.work / "perf"
    if "word_ids" not in run.state:
        run.state["word_ids"] = carried_word_ids(run.stage.model_dir)
    data = serve.perf_input(run.state["word_ids"], work / "input.json")
    result = serve.perf_sweeps(run.state["runtime"], run.state["server"], run.state["model_names"],
                               data, work, deadline=run.deadline - 15,
                               concurrency=run.args.concurrency,
                               interval_ms=run.args.perf_interval_ms)  # fmt: skip
    result.metrics["versus_ceiling"] = serve.versus_ceiling(
        result.metrics.get("points", []), run.state.get("ceiling_points", [])
    )
    return result


def stop_triton(run: Run) -> None:
    server = run.state.pop("server", None)
    if server is not None:
        server.stop()
