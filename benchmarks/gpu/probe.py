"""What the machine the GPU check runs on has: GPU, driver, CUDA, torch, ONNX Runtime, the
shared libpython the python-backend stub needs, the CPU. Reads only; never changes the card's
settings (no ``nvidia-smi`` option that writes)."""

from __future__ import annotations

import ctypes.util
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

QUERY = "name,driver_version,memory.total,compute_cap"


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str
    memory_mib: int
    compute_cap: str


@dataclass
class Facts:
    """Everything the plan and the report need to know about the machine."""

    gpus: list[Gpu] = field(default_factory=list)
    nvidia_smi: str = ""  # why there is no nvidia-smi reading ('' when there is one)
    driver_cuda: str = ""  # the CUDA version the driver supports (nvidia-smi's header)
    torch: str = ""
    torch_cuda: str = ""  # the CUDA runtime torch was built with
    cuda_available: bool = False
    cuda_reason: str = ""  # why torch sees no GPU
    cuda_device: str = ""
    cudnn: str = ""
    onnxruntime: str = ""
    ort_providers: list[str] = field(default_factory=list)
    python: str = platform.python_version()
    python_executable: str = sys.executable
    libpython: str = ""  # the shared libpython the python-backend stub loads ('' if none)
    cpu: str = ""
    cores: int = 0

    @property
    def gpu_label(self) -> str:
        if not self.gpus:
            return "no GPU"
        g = self.gpus[0]
        more = f" (x{len(self.gpus)})" if len(self.gpus) > 1 else ""
        return (
            f"{g.name}{more}, driver {g.driver}, CUDA {self.driver_cuda or '?'} (driver) / "
            f"{self.torch_cuda or 'none'} (torch {self.torch})"
        )

    @property
    def slug(self) -> str:
        """A file-name label of the GPU: ``NVIDIA H200`` -> ``h200``."""
        if not self.gpus:
            return "no-gpu"
        name = re.sub(r"^nvidia\s+", "", self.gpus[0].name.strip(), flags=re.I).lower()
        return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gpu_label"] = self.gpu_label
        return out


def parse_query(text: str) -> list[Gpu]:
    """Rows of ``nvidia-smi --query-gpu=<QUERY> --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise ValueError(f"unexpected nvidia-smi row {line!r} (want {QUERY})")
        name, driver, memory, cap = parts
        gpus.append(Gpu(name, driver, int(float(memory)) if memory[:1].isdigit() else 0, cap))
    return gpus


def parse_driver_cuda(text: str) -> str:
    """The ``CUDA Version: X.Y`` of plain ``nvidia-smi`` output ('' when absent)."""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", text)
    return match.group(1) if match else ""


def _run(command: list[str], timeout_s: float = 20.0) -> str:
    return subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=timeout_s
    ).stdout


def probe_nvidia_smi(facts: Facts) -> None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        facts.nvidia_smi = "nvidia-smi is not on PATH"
        return
    try:
        facts.gpus = parse_query(
            _run([smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"])
        )
        facts.driver_cuda = parse_driver_cuda(_run([smi]))
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        facts.nvidia_smi = f"nvidia-smi failed: {exc}"


def probe_torch(facts: Facts) -> None:
    try:
        import torch  # heavy: imported by the probe, not when this module is imported
    except ImportError as exc:
        facts.cuda_reason = f"torch is not importable: {exc}"
        return
    facts.torch = torch.__version__
    facts.torch_cuda = torch.version.cuda or ""
    facts.cuda_available = bool(torch.cuda.is_available())
    if not facts.cuda_available:
        facts.cuda_reason = f"torch {torch.__version__} sees no CUDA device" + (
            "" if facts.torch_cuda else " (a CPU-only build)"
        )
        return
    facts.cuda_device = torch.cuda.get_device_name(0)
    facts.cudnn = str(torch.backends.cudnn.version() or "")
    if not facts.gpus:  # nvidia-smi unreadable: name the card from torch (no driver version)
        props = torch.cuda.get_device_properties(0)
        cap = f"{props.major}.{props.minor}"
        facts.gpus = [Gpu(props.name, "unknown (nvidia-smi)", props.total_memory // 2**20, cap)]


def probe_onnxruntime(facts: Facts) -> None:
    try:
        import onnxruntime as ort  # heavy: see probe_torch
    except ImportError:
        return
    facts.onnxruntime = ort.__version__
    facts.ort_providers = list(ort.get_available_providers())


def find_libpython() -> str:
    """The shared libpython of this interpreter ('' when it is statically linked and none is
    installed): the python-backend stub links ``libpython3.X.so.1.0``."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = f"libpython{version}.so.1.0"
    for folder in (sysconfig.get_config_var("LIBDIR"), sys.base_prefix + "/lib",
                   "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):  # fmt: skip
        if folder and (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    found = ctypes.util.find_library(f"python{version}")
    return found or ""


def probe_cpu(facts: Facts) -> None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    facts.cpu = match.group(1).strip() if match else platform.processor()
    facts.cores = len(re.findall(r"^processor\s*:", text, re.M))


def collect() -> Facts:
    facts = Facts()
    probe_nvidia_smi(facts)
    probe_torch(facts)
    probe_onnxruntime(facts)
    facts.libpython = find_libpython()
    probe_cpu(facts)
    return facts
