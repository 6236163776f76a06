"""What travels to a lent GPU machine: the staged folder, its manifest, the size check.

The ``device`` tool copies the working tree (tracked and untracked-not-ignored files) plus the
ignored paths named in ``carry``, 64 MiB in all, to a machine with no network. ``make
gpu-prepare`` (:mod:`benchmarks.gpu.stage`) fills the git-ignored ``.gpu/`` folder; ``make
gpu-check`` (:mod:`benchmarks.gpu.check`) reads it there. Stdlib only: this module runs on both
machines.

Layout of the staged folder::

    stage.json                 manifest: sources, versions, files with sizes and sha256
    model/config.json          MiniLM's BERT config (+ sentence_bert_config.json)
    model/weights.safetensors  fp16 weights; only the carried rows of the word embeddings
    reference.npz              parity inputs and the CPU fp32 outputs they owe
    triton/<model>/config.pbtxt  KIND_GPU python-backend configs (from model_config_pb2)
    runtime.tar.xz             tritonserver + python backend + libs + perf_analyzer
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARRY_LIMIT_BYTES = 64 * 1024 * 1024  # the device tool's limit on what travels
STAGE_DIR = ".gpu"
MANIFEST = "stage.json"
MODEL_DIR = "model"
WEIGHTS = "weights.safetensors"
REFERENCE = "reference.npz"
TRITON_REPOSITORY = "triton"
RUNTIME_ARCHIVE = "runtime.tar.xz"
UNPACKED_MARKER = ".unpacked-from"
# the Triton models of the check: name -> (dtype, instances per GPU), in serving order (the
# check measures as many as its time budget allows)
MODELS = {
    "minilm_torch_fp32": ("fp32", 1),
    "minilm_torch_fp16": ("fp16", 1),
    "minilm_torch_fp16_x2": ("fp16", 2),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Stage:
    """A staged folder (``.gpu/`` by default) and what a check can find in it."""

    root: Path

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def model_dir(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def reference(self) -> Path:
        return self.root / REFERENCE

    @property
    def triton_repository(self) -> Path:
        return self.root / TRITON_REPOSITORY

    @property
    def runtime_archive(self) -> Path:
        return self.root / RUNTIME_ARCHIVE

    def manifest(self) -> dict[str, Any]:
        """The manifest ({} when there is none or it is unreadable)."""
        try:
            return dict(json.loads(self.manifest_path.read_text()))
        except (OSError, ValueError):
            return {}

    def problems(self, *, check_hashes: bool = False) -> list[str]:
        """Why the staged model files cannot be used ([] when they can)."""
        manifest = self.manifest()
        if not manifest:
            return [f"no staged files: {self.manifest_path} is missing (run `make gpu-prepare`)"]
        found = []
        for name, entry in manifest.get("files", {}).items():
            if name == RUNTIME_ARCHIVE:
                continue  # optional: only the Triton steps need it
            path = self.root / name
            if not path.is_file():
                found.append(f"{path} is missing")
            elif path.stat().st_size != entry["bytes"]:
                found.append(f"{path} has {path.stat().st_size} bytes, staged {entry['bytes']}")
            elif check_hashes and sha256(path) != entry["sha256"]:
                found.append(f"{path} differs from the staged file (sha256)")
        return found

    def runtime_problem(self) -> str:
        """Why the carried Triton runtime cannot be used ('' when it can)."""
        entry = self.manifest().get("files", {}).get(RUNTIME_ARCHIVE)
        if entry is None:
            reason = self.manifest().get("runtime_skipped", "it was not staged")
            return f"no Triton runtime was staged: {reason}"
        if not self.runtime_archive.is_file():
            return f"{self.runtime_archive} is missing (name .gpu in the run's carry)"
        if self.runtime_archive.stat().st_size != entry["bytes"]:
            return f"{self.runtime_archive} is not the staged archive (size differs)"
        return ""


def unpack_runtime(archive: Path, dest: Path) -> Path:
    """Unpack the carried runtime into ``dest`` once (a marker records which archive)."""
    stamp = f"{archive.stat().st_size}:{archive.stat().st_mtime_ns}"
    marker = dest / UNPACKED_MARKER
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(dest, filter="data")  # relative links inside dest only
    marker.write_text(stamp)
    return dest


# -- what travels ---------------------------------------------------------------------------
@dataclass
class TravelSize:
    """Bytes the device tool would copy: the working tree plus the carried paths."""

    tree_bytes: int
    tree_files: int
    carried: dict[str, int] = field(default_factory=dict)
    limit_bytes: int = CARRY_LIMIT_BYTES

    @property
    def total_bytes(self) -> int:
        return self.tree_bytes + sum(self.carried.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.limit_bytes

    def describe(self) -> str:
        mib = 1024 * 1024
        parts = [f"working tree {self.tree_bytes / mib:.1f} MiB ({self.tree_files} files)"]
        parts += [f"{name} {size / mib:.1f} MiB" for name, size in sorted(self.carried.items())]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        return (
            f"{' + '.join(parts)} = {self.total_bytes / mib:.1f} MiB of "
            f"{self.limit_bytes / mib:.0f} MiB: {verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "tree_bytes": self.tree_bytes,
            "tree_files": self.tree_files,
            "carried": self.carried,
            "total_bytes": self.total_bytes,
            "limit_bytes": self.limit_bytes,
            "fits": self.fits,
        }


def tree_files(repo_root: Path) -> list[Path]:
    """Tracked and untracked-not-ignored files (what travels without ``carry``)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo_root,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    names = sorted({n for n in out.decode().split("\0") if n})
    return [repo_root / n for n in names if os.path.lexists(repo_root / n)]


def folder_bytes(path: Path) -> int:
    """Bytes under ``path`` (links count as links, as they travel)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())


def travel_size(
    repo_root: Path, carry: list[str], limit_bytes: int = CARRY_LIMIT_BYTES
) -> TravelSize:
    """What a ``run`` with ``carry`` would copy from ``repo_root`` (``shared/`` included)."""
    files = tree_files(repo_root)
    counted = {f.resolve() if not f.is_symlink() else f for f in files}
    tree = sum(f.lstat().st_size for f in files)
    carried = {name: folder_bytes(repo_root / name) for name in carry}
    shared = repo_root / "shared"
    if shared.is_dir():  # travels where the checkout has one, even if ignored
        extra = [p for p in shared.rglob("*") if p.is_file() and p.resolve() not in counted]
        carried["shared/"] = sum(p.lstat().st_size for p in extra)
    return TravelSize(tree, len(files), carried, limit_bytes)
