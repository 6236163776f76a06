"""The GPU check's results: JSON (everything) and markdown (the tables), labelled with the
GPU, driver and CUDA versions, ready to commit under ``benchmarks/results/``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.gpu.probe import Facts
from export.status import StepResult

WEIGHTS_NOTE = (
    "Weights: all-MiniLM-L6-v2 travelled in fp16 with the word-embedding rows of the ids the "
    "check sends (benchmarks/gpu/minilm.py): fp16 figures are the real fp16 model's; fp32 "
    "figures are fp32 kernels on fp16-rounded weights (same cost), checked against the CPU "
    "fp32 reference of those weights."
)


def summary(result: StepResult) -> str:
    """One line of what an OK step found (its reason otherwise)."""
    if result.reason:  # its first line: a server's log tail stays in the JSON
        return result.reason.strip().splitlines()[0]
    m = result.metrics
    if "budget" in m:
        label = "min cosine" if m["metric"] == "cosine" else "max rel L2"
        op = ">=" if m["metric"] == "cosine" else "<="
        return f"{label} {m['value']:.6g} {op} {m['budget']:g} ({m.get('against', '')})"
    if result.step == "environment":
        return str(m.get("gpu_label", ""))
    if result.step == "load":
        if "capability" not in m:
            return str(m["device"])
        return f"{m['device']} (sm {m['capability']}), {m['memory_allocated_mib']} MiB allocated"
    if result.step == "stage":
        runtime = m.get("runtime", "no runtime")
        return (
            f"staged {m.get('staged')}, {m.get('model', {}).get('word_rows')} word rows; {runtime}"
        )
    if result.step == "triton":
        kinds = {
            n: "/".join(f"{g['kind']} x{g['count']}" for g in gs) for n, gs in m["models"].items()
        }
        return f"up in {m['startup_s']} s: " + ", ".join(f"{n} {k}" for n, k in kinds.items())
    if "points" in m:
        return f"{len(m['points'])} points"
    return ""


def _ceiling_table(points: list[dict[str, Any]]) -> list[str]:
    lines = ["| engine | dtype | batch | items/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {p['engine']} | {p['dtype']} | {p['batch']} | {p['items_per_s']:.1f} | "
        f"{p['p50_ms']:.3f} | {p['p99_ms']:.3f} |"
        for p in points
    ]
    return lines


def _perf_table(points: list[dict[str, Any]], versus: list[dict[str, Any]]) -> list[str]:
    ratio = {(v["model"], v["concurrency"]): v for v in versus}
    lines = [
        "| model | concurrency | infer/s | p50 ms | p99 ms | server queue ms | "
        "server infer ms | vs in-process (same dtype, batch = concurrency) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        v = ratio.get((p["model"], p["concurrency"]))
        vs = f"{v['ratio']:.2f}x of {v['ceiling_items_per_s']:.0f}" if v else "—"
        lines.append(
            f"| {p['model']} | {p['concurrency']} | {p['throughput_infer_per_s']:.1f} | "
            f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['server_queue_ms']:.2f} | "
            f"{p['server_compute_infer_ms']:.2f} | {vs} |"
        )
    return lines


REHEARSAL = (
    "**CPU rehearsal** (`--device cpu`): the GPU check's code path on the CPU with KIND_CPU "
    "instances, to prove the script, not to measure: these are not GPU figures."
)


def to_markdown(
    results: dict[str, StepResult], facts: Facts, created: str, device: str = "cuda"
) -> str:
    gpu = facts.gpus[0] if facts.gpus else None
    card = (
        f"{gpu.name}, {gpu.memory_mib} MiB, compute capability {gpu.compute_cap}"
        if gpu
        else f"none ({facts.nvidia_smi or facts.cuda_reason})"
    )
    title = facts.gpu_label if device == "cuda" else f"CPU rehearsal on {facts.cpu}"
    lines = [
        f"# GPU check: {title}",
        "",
        *([REHEARSAL, ""] if device != "cuda" else []),
        f"- Date (UTC): {created}",
        f"- GPU: {card}",
        f"- Driver {gpu.driver if gpu else '—'}; CUDA {facts.driver_cuda or '—'} (driver), "
        f"{facts.torch_cuda or '—'} (torch), cuDNN {facts.cudnn or '—'}",
        f"- torch {facts.torch or '—'}; onnxruntime {facts.onnxruntime or '—'} "
        f"({', '.join(facts.ort_providers) or 'no providers'}); Python {facts.python}",
        f"- CPU: {facts.cpu} x {facts.cores}",
        f"- {WEIGHTS_NOTE}",
        "",
        "## Steps",
        "",
        "| step | status | result or reason | s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.step} | {r.status.value} | {summary(r).replace('|', '/')} | {r.duration_s:.1f} |"
        for r in results.values()
    ]
    points = [p for s in ("ceiling_torch", "ceiling_ort_cuda") if s in results
              for p in results[s].metrics.get("points", [])]  # fmt: skip
    if points:
        seq = (
            results["ceiling_torch"].metrics.get("seq", "?") if "ceiling_torch" in results else "?"
        )
        lines += ["", f"## In-process ceiling ({seq} tokens, one call at a time)", ""]
        lines += _ceiling_table(points)
    perf = results.get("perf_analyzer")
    if perf is not None and perf.metrics.get("points"):
        kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
        lines += ["", f"## Triton, {kind} python backend (perf_analyzer, gRPC, 1 item a request)"]
        lines += [""]
        lines += _perf_table(perf.metrics["points"], perf.metrics.get("versus_ceiling", []))
    return "\n".join(lines) + "\n"


def write_report(
    results: dict[str, StepResult], facts: Facts, out: Path, name: str, device: str = "cuda"
) -> list[Path]:
    """``out/NAME.json`` and ``out/NAME.md``; returns both paths (markdown last)."""
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    document = {
        "name": name,
        "created": created,
        "gpu_label": facts.gpu_label,
        "device": device,
        "facts": facts.as_dict(),
        "weights_note": WEIGHTS_NOTE,
        "steps": [r.as_dict() for r in results.values()],
    }
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    md_path = out / f"{name}.md"
    md_path.write_text(to_markdown(results, facts, created, device))
    return [json_path, md_path]
