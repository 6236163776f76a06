"""Triton steps of the GPU check: the carried tritonserver serving the carried MiniLM with
KIND_GPU python-backend instances (PyTorch on CUDA), its answers under the budgets, and
perf_analyzer against it.

The server is ``deploy.local.triton.TritonServer`` with :class:`CarriedRuntime`: the binary,
libraries, python backend and perf_analyzer come from the unpacked ``runtime.tar.xz``, while
the python-backend stubs run this interpreter's environment (the lent machine's torch).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu import carry
from benchmarks.gpu.minilm import INPUTS, ordinary, random_ids
from benchmarks.perf_analyzer import PerfAnalyzerError, run_sweep, write_token_input_data
from deploy.local.errors import TritonStartError
from deploy.local.runtime import TritonRuntime
from deploy.local.triton import TritonServer
from export.status import Status, StepResult
from export.verify import Runner

ROOT = Path(__file__).resolve().parents[2]
MODEL_FILE = Path(__file__).with_name("triton_model.py")
CONCURRENCY = (1, 8, 32)
SEQ = 32
INFER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CarriedRuntime(TritonRuntime):
    """tritonserver, its libraries, the python backend and perf_analyzer from ``files`` (the
    archive's layout); the stubs run ``env_dir`` (this interpreter's prefix)."""

    files: Path = Path(".")

    @classmethod
    def here(cls, files: Path) -> CarriedRuntime:
        return cls(env_dir=Path(sys.prefix), files=files)

    @property
    def python_version(self) -> str:
        return f"{sys.version_info.major}.{sys.version_info.minor}"

    @property
    def python_home_lib(self) -> Path:
        return Path(sysconfig.get_config_var("LIBDIR") or Path(sys.base_prefix) / "lib")

    @property
    def pytriton_dir(self) -> Path:
        return self.files / "pytriton" / "tritonserver"

    @property
    def server_libs(self) -> Path:
        return self._require(self.files / "nvidia_pytriton.libs", "tritonserver's libraries")

    @property
    def perf_analyzer(self) -> Path:
        return self._require(self.files / "bin" / "perf_analyzer", "perf_analyzer")

    def server_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = super().server_env(base)
        env["HF_HUB_OFFLINE"] = "1"  # no network there: transformers must not try
        return env

    def perf_analyzer_env(self) -> dict[str, str]:
        env = super().server_env()
        env["LD_LIBRARY_PATH"] = f"{self.files / 'perf_libs'}:{env['LD_LIBRARY_PATH']}"
        return env


def assemble_repository(
    configs: Path, model_dir: Path, dest: Path, only: Sequence[str] = ()
) -> list[str]:
    """A model repository in ``dest``: each staged config (or those in ``only``), version 1 =
    ``model.py`` + the carried weights (links). Returns the model names, in serving order."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(dest.parent / f"{dest.name}-failed", ignore_errors=True)  # start_server's
    staged = {c.parent.name: c for c in configs.glob("*/config.pbtxt")}
    unknown = sorted(set(only) - set(staged))
    if unknown:
        raise ValueError(f"no staged config for {unknown} under {configs} (has {sorted(staged)})")
    names = []
    order = [n for n in carry.MODELS if n in staged] + sorted(set(staged) - set(carry.MODELS))
    for name in order:
        if only and name not in only:
            continue
        config = staged[name]
        version = dest / name / "1"
        version.mkdir(parents=True)
        shutil.copyfile(config, dest / name / "config.pbtxt")
        (version / "model.py").symlink_to(MODEL_FILE)
        (version / "minilm").symlink_to(model_dir.resolve())
        names.append(name)
    return names


def start_server(
    runtime: TritonRuntime, repository: Path, work: Path, timeout_s: float
) -> tuple[TritonServer, dict[str, str]]:
    """Triton serving every model of ``repository``; if some fail to load, once more with the
    others (their folders are moved aside). Returns the server and {failed model: error}."""
    try:
        server = TritonServer(runtime, repository, work_dir=work, startup_timeout_s=timeout_s)
        return server.start(), {}
    except TritonStartError as exc:
        found = re.findall(r"failed to load '([^']+)' version \d+: ([^\n\"]+)", str(exc))
        failed = {name: error.split("\\n")[0][:300] for name, error in found}
        models = {p.name for p in repository.iterdir() if p.is_dir()}
        if not failed or not models - failed.keys():
            raise
    aside = repository.parent / f"{repository.name}-failed"
    aside.mkdir(exist_ok=True)
    for name in failed:
        (repository / name).rename(aside / name)
    shutil.copyfile(work / "tritonserver.log", work / "tritonserver-first-start.log")
    server = TritonServer(runtime, repository, work_dir=work, startup_timeout_s=timeout_s)
    return server.start(), failed


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=INFER_TIMEOUT_S) as response:
        return json.loads(response.read())


def model_facts(server: TritonServer, names: Sequence[str]) -> dict[str, Any]:
    """What Triton says it loaded: each model's instance groups (kind, count, GPUs)."""
    facts = {}
    for name in names:
        config = _get(f"http://{server.http_url}/v2/models/{name}/config")
        facts[name] = [
            {"kind": g.get("kind"), "count": g.get("count"), "gpus": g.get("gpus", [])}
            for g in config.get("instance_group", [])
        ]
    return facts


def http_runner(server: TritonServer, model: str) -> Runner:
    """KServe v2 JSON over HTTP (stdlib only: the lent machine has no tritonclient)."""

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        body = {"inputs": [{"name": n, "shape": list(inputs[n].shape), "datatype": "INT64",
                            "data": inputs[n].ravel().tolist()} for n in INPUTS]}  # fmt: skip
        request = urllib.request.Request(
            f"http://{server.http_url}/v2/models/{model}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=INFER_TIMEOUT_S) as response:
            out = json.loads(response.read())["outputs"][0]
        return [np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])]

    return run


def perf_input(word_ids: np.ndarray, out: Path, rows: int = 64, seed: int = 1) -> Path:
    """perf_analyzer input data: ``rows`` requests of ``SEQ`` carried ids each."""
    ids = random_ids(np.random.default_rng(seed), ordinary(word_ids), rows, SEQ)
    return write_token_input_data([(r, [1] * SEQ, [0] * SEQ) for r in ids.tolist()], out)


def perf_sweeps(
    runtime: TritonRuntime,
    server: TritonServer,
    models: Sequence[str],
    input_data: Path,
    work: Path,
    deadline: float,
    per_point_s: float = 12.0,
    concurrency: Sequence[int] = CONCURRENCY,
    interval_ms: int = 2000,
) -> StepResult:
    """perf_analyzer over gRPC per model and concurrency, as many as fit before ``deadline``
    (a point that fails is reported and the others still run)."""
    start = time.perf_counter()
    points: list[dict[str, Any]] = []
    commands: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    for model in models:
        for c in concurrency:
            left = deadline - time.monotonic()
            if left < per_point_s:
                skipped.append(f"{model} c={c}")
                continue
            try:
                sweep = run_sweep(runtime, model, server.grpc_url, protocol="grpc",
                                  input_data=input_data, concurrency=[c], out_dir=work,
                                  measurement_interval_ms=interval_ms, max_trials=3,
                                  timeout_s=min(60.0, left))  # fmt: skip
            except PerfAnalyzerError as exc:
                last = [line for line in str(exc).splitlines() if line.strip()][-1:]
                failed.append(f"{model} c={c}: {' '.join(last)}")
                continue
            commands.append(sweep.command_line)
            points += [p.as_dict() for p in sweep.points]
    reasons = [f"failed: {'; '.join(failed)}"] if failed else []
    reasons += [f"time budget: not measured {', '.join(skipped)}"] if skipped else []
    status = Status.FAILED if failed else Status.OK if points else Status.SKIPPED
    return StepResult(
        "perf_analyzer",
        status,
        reason=" / ".join(reasons),
        metrics={
            "points": points,
            "commands": commands,
            "failed": failed,
            "not_measured": skipped,
            "seq": SEQ,
        },
        duration_s=time.perf_counter() - start,
    )


def versus_ceiling(
    perf: list[dict[str, Any]], ceiling: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Triton's infer/s at concurrency c against the in-process items/s at batch c, same dtype."""
    best = {(p["dtype"], p["batch"]): p["items_per_s"] for p in ceiling if p["engine"] == "torch"}
    rows = []
    for p in perf:
        dtype = "fp16" if "fp16" in p["model"] else "fp32"
        base = best.get((dtype, p["concurrency"]))
        if base:
            rows.append({"model": p["model"], "concurrency": p["concurrency"], "dtype": dtype,
                         "triton_infer_per_s": p["throughput_infer_per_s"],
                         "ceiling_items_per_s": base,
                         "ratio": round(p["throughput_infer_per_s"] / base, 3)})  # fmt: skip
    return rows


def runtime_files(stage: carry.Stage, work: Path) -> Path:
    """The unpacked runtime under ``work`` (unpacked once per archive)."""
    return carry.unpack_runtime(stage.runtime_archive, work / "runtime")
