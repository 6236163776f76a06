"""Locate the pieces of the Triton runtime environment (a virtual environment, not ours).

The runtime environment holds the ``nvidia-pytriton`` wheel (tritonserver 2.51 binary, python
backend, python-backend stubs), numpy<2, onnxruntime and ``tritonclient==2.51`` (perf_analyzer).
It is created by ``deploy/bootstrap.sh`` from ``requirements/triton-runtime.txt``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from deploy.local.errors import RuntimeMissingError

_SETUP_HINT = "run `make setup` (or deploy/bootstrap.sh) to create it"


@dataclass(frozen=True)
class TritonRuntime:
    """A Triton runtime virtual environment at ``env_dir``."""

    env_dir: Path

    # -- the environment itself -------------------------------------------------------------
    @property
    def python_version(self) -> str:
        """``X.Y`` of the environment's interpreter, read from ``pyvenv.cfg``."""
        cfg = self.env_dir / "pyvenv.cfg"
        if not cfg.is_file():
            raise RuntimeMissingError(
                f"no Triton runtime environment at {self.env_dir} (no pyvenv.cfg); {_SETUP_HINT}"
            )
        text = cfg.read_text()
        match = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", text, re.MULTILINE)
        if not match:
            raise RuntimeMissingError(f"cannot read the Python version from {cfg}")
        return f"{match.group(1)}.{match.group(2)}"

    @property
    def python_home_lib(self) -> Path:
        """The base interpreter's ``lib/``: the python-backend stub loads libpython from it."""
        home = re.search(r"^home\s*=\s*(.+)$", (self.env_dir / "pyvenv.cfg").read_text(), re.M)
        if not home:
            raise RuntimeMissingError(f"no 'home' in {self.env_dir / 'pyvenv.cfg'}")
        return Path(home.group(1).strip()).parent / "lib"

    @property
    def site_packages(self) -> Path:
        return self.env_dir / "lib" / f"python{self.python_version}" / "site-packages"

    @property
    def bin_dir(self) -> Path:
        return self.env_dir / "bin"

    # -- tritonserver ----------------------------------------------------------------------
    @property
    def pytriton_dir(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def server_binary(self) -> Path:
        return self._require(
            self.pytriton_dir / "bin" / "tritonserver", "the tritonserver binary (nvidia-pytriton)"
        )

    @property
    def server_libs(self) -> Path:
        return self._require(
            self.site_packages / "nvidia_pytriton.libs", "tritonserver's shared libraries"
        )

    @property
    def python_backend_files(self) -> list[Path]:
        """``libtriton_python.so``, its utils module and the stub for this Python version."""
        backend = self.pytriton_dir / "backends" / "python"
        stub = self.pytriton_dir / "python_backend_stubs" / self.python_version
        return [
            self._require(backend / "libtriton_python.so", "the python backend"),
            self._require(backend / "triton_python_backend_utils.py", "the python backend utils"),
            self._require(
                stub / "triton_python_backend_stub",
                f"the python-backend stub for Python {self.python_version}",
            ),
        ]

    def backend_directory(self, where: Path) -> Path:
        """Build (idempotently) a ``--backend-directory`` holding ``python/`` under ``where``."""
        python_dir = where / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for source in self.python_backend_files:
            link = python_dir / source.name
            if link.is_symlink() or link.exists():
                if link.resolve() == source.resolve():
                    continue
                link.unlink()
            link.symlink_to(source)
        return where

    @property
    def cache_directory(self) -> Path:
        return self.pytriton_dir / "caches"

    def server_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for tritonserver: its libs and libpython found, the runtime env active."""
        env = dict(os.environ if base is None else base)
        lib_path = [str(self.server_libs), str(self.python_home_lib)]
        if env.get("LD_LIBRARY_PATH"):
            lib_path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(lib_path)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
        env["VIRTUAL_ENV"] = str(self.env_dir)
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        return env

    # -- perf_analyzer ---------------------------------------------------------------------
    @property
    def perf_analyzer(self) -> Path:
        return self._require(
            self.bin_dir / "perf_analyzer", "perf_analyzer (tritonclient==2.51.0 wheel)"
        )

    def perf_analyzer_env(self) -> dict[str, str]:
        env = dict(os.environ)
        cudart = self.site_packages / "nvidia" / "cuda_runtime" / "lib"
        self._require(cudart, "libcudart for perf_analyzer (nvidia-cuda-runtime-cu12)")
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env

    def _require(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise RuntimeMissingError(f"{what} not found at {path}; {_SETUP_HINT}")
        return path
