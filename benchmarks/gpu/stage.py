"""``make gpu-prepare``: stage into ``.gpu/`` what the GPU check needs on a machine with no
network, and check that it fits the device tool's 64 MiB with the working tree.

``python -m benchmarks.gpu.stage [--out .gpu] [--no-runtime]``. Exit 0 when staged and it
fits, 2 when it would not travel. See :mod:`benchmarks.gpu.carry` for the layout and
:mod:`benchmarks.gpu.minilm` for why the weights travel as they do.

The Triton runtime is the closure of what ``tritonserver``, the python backend, its stubs and
``perf_analyzer`` load (their ELF ``DT_NEEDED`` entries, followed through the wheel's own
``nvidia_pytriton.libs``), packed with xz: 110 MB of files in about 31 MB. Re-staging keeps an
archive made from the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import re
import shutil
import struct
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2 as mc

from benchmarks.gpu import carry
from benchmarks.gpu.minilm import rounded, save_carried, save_references
from deploy.local.runtime import TritonRuntime
from deploy.local.settings import StackSettings
from export.model_config import ServingOptions, Target, build_config, to_text, validate_config
from export.models import minilm
from export.spec import ModelSpec
from export.verify import ReferenceCase, default_cases, reference

ROOT = Path(__file__).resolve().parents[2]
SEED = 20
POOL_SIZE = 4096  # ordinary word pieces carried: 3 MB of fp16 rows
SPECIAL_IDS = (0, 100, 101, 102, 103)  # [PAD] [UNK] [CLS] [SEP] [MASK]
# the lent machine's python3 is 3.12 (device README, KINDS.md). Not 3.13: its stub links a
# bundled 32 MB libpython3.13, which would not fit.
STUBS = ("3.12",)
SENTENCES = [
    "Triton serves the exported model with dynamic batching, one request at a time or many "
    "of them merged into a single call by the dynamic batcher.",
    "Embeddings of similar sentences point in similar directions, which is what semantic "
    "search relies on when it compares two pieces of text by cosine similarity.",
    "The cat sat on the mat while the dog slept in the sun.",
]


# -- the model ------------------------------------------------------------------------------
def word_pool(vocab_size: int, tokenizer: Tokenizer, seed: int = SEED) -> np.ndarray:
    """The ordinary word-piece ids the check draws from: a seeded sample plus the sentences'."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(np.arange(1000, vocab_size), size=POOL_SIZE, replace=False)
    words = {i for e in tokenizer.encode_batch(SENTENCES) for i in e.ids if i >= 1000}
    return np.unique(np.concatenate([sample, np.fromiter(words, dtype=np.int64)]))


def sentence_inputs(tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encoded = tokenizer.encode_batch(SENTENCES)
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
    }


def stage_model(spec: ModelSpec, out: Path) -> dict[str, object]:
    """Weights (fp16, carried rows), config and both references of ``spec`` into ``out``."""
    assert spec.tokenizer is not None
    source = spec.tokenizer.parent
    tokenizer = Tokenizer.from_file(str(spec.tokenizer))
    tokenizer.no_truncation()
    pool = word_pool(int(spec.parameters["vocab_size"]), tokenizer)
    sampler = minilm.token_sampler(int(spec.parameters["vocab_size"]), pool=pool)
    sentences = sentence_inputs(tokenizer)
    true = reference(
        dataclasses.replace(spec, sample_inputs=sampler),
        seed=SEED,
        cases=default_cases(spec.max_length),
        sample_data=sentences,
    )
    encoder = spec.module.encoder
    assert isinstance(encoder, torch.nn.Module), "MiniLM's spec wraps a transformers encoder"
    save_carried(
        encoder, np.concatenate([pool, SPECIAL_IDS]), out / carry.MODEL_DIR / carry.WEIGHTS
    )
    for name in ("config.json", "sentence_bert_config.json"):
        shutil.copyfile(source / name, out / carry.MODEL_DIR / name)
    original = {k: v.clone() for k, v in encoder.state_dict().items()}
    try:
        rounded(encoder)
        rounded_ref = [ReferenceCase(c.label, c.inputs, spec.torch_outputs(c.inputs)) for c in true]
    finally:
        encoder.load_state_dict(original)
    labels = save_references(out / carry.REFERENCE, true, rounded_ref)
    return {"word_rows": len(pool) + len(SPECIAL_IDS), "seed": SEED, "cases": labels}


def triton_configs(spec: ModelSpec, kind: str = "gpu") -> dict[str, mc.ModelConfig]:
    """The check's python-backend models (``triton_model.py``), KIND_GPU (or KIND_CPU for the
    CPU test). No queue policy: with one, tritonserver 2.51 stalls gRPC requests ~500 ms now
    and then (benchmarks/README.md); no response cache: perf_analyzer repeats its inputs."""
    configs: dict[str, mc.ModelConfig] = {}
    for name, (dtype, count) in carry.MODELS.items():
        options = ServingOptions(
            target=Target.CPU, max_queue_size=0, response_cache=False, instance_count=count
        )
        config = build_config(dataclasses.replace(spec, name=name, ragged=False), options)
        group = config.instance_group[0]
        group.name = f"{name}_{kind}"
        group.kind = group.KIND_GPU if kind == "gpu" else group.KIND_CPU
        for key in ("onnx_model_filename", "intra_op_num_threads"):  # ONNX Runtime's, not ours
            del config.parameters[key]
        config.parameters["dtype"].string_value = dtype
        config.parameters["weights"].string_value = "minilm"
        configs[name] = config
    return configs


def write_triton_configs(spec: ModelSpec, repository: Path, kind: str = "gpu") -> list[Path]:
    """The configs into the staged repository (never the product's: benchmarks only measure)."""
    written = []
    for name, config in triton_configs(spec, kind).items():
        path = repository / name / "config.pbtxt"
        validate_config(config, str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_text(config))
        written.append(path)
    return written


# -- the Triton runtime ---------------------------------------------------------------------
def elf_needed(path: Path) -> list[str]:
    """The ``DT_NEEDED`` entries of a 64-bit little-endian ELF file (what it loads)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, shentsize, shnum = (struct.unpack_from("<Q", data, 0x28)[0],
                               *struct.unpack_from("<HH", data, 0x3A))  # fmt: skip
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    needed = []
    for _, sh_type, _, _, offset, size, link, *_ in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab + value)
                needed.append(data[strtab + value : end].decode())
    return needed


def _base(name: str) -> str:
    """``libcudart-09529672.so.12.6.77`` and ``libcudart.so.12`` -> ``libcudart``."""
    return re.sub(r"-[0-9a-f]{8}$", "", name.split(".so")[0])


def runtime_entries(
    runtime: TritonRuntime, stubs: tuple[str, ...] = STUBS
) -> list[tuple[str, Path | str]]:
    """(path in the archive, source file | relative link target), sorted."""
    site, libs = runtime.site_packages, runtime.server_libs
    server = runtime.pytriton_dir
    roots = {
        "pytriton/tritonserver/bin/tritonserver": server / "bin" / "tritonserver",
        "bin/perf_analyzer": runtime.perf_analyzer,
        **{f"pytriton/tritonserver/backends/python/{p.name}": p
           for p in runtime.python_backend_files if "stub" not in p.name},
        **{f"pytriton/tritonserver/python_backend_stubs/{v}/triton_python_backend_stub":
           server / "python_backend_stubs" / v / "triton_python_backend_stub" for v in stubs},
        **{str(p.relative_to(site)): p for p in (server / "caches").rglob("*.so")},
    }  # fmt: skip
    bundled = {p.name: p for p in libs.iterdir()}
    by_base = {_base(n): n for n in bundled}
    entries: dict[str, Path | str] = dict(roots)
    todo = [p for p in roots.values() if p.suffix != ".py"]
    while todo:
        for name in elf_needed(todo.pop()):
            if name in bundled and f"nvidia_pytriton.libs/{name}" not in entries:
                entries[f"nvidia_pytriton.libs/{name}"] = bundled[name]
                todo.append(bundled[name])
    # perf_analyzer names plain sonames (libcudart.so.12, libb64.so.0d): link the wheel's copies
    for name in elf_needed(runtime.perf_analyzer):
        found = by_base.get(_base(name))
        if found and name not in bundled:
            entries[f"perf_libs/{name}"] = f"../nvidia_pytriton.libs/{found}"
            entries.setdefault(f"nvidia_pytriton.libs/{found}", bundled[found])
    return sorted(entries.items())


def fingerprint(entries: list[tuple[str, Path | str]]) -> str:
    return json.dumps(
        [
            [n, s if isinstance(s, str) else [s.stat().st_size, s.stat().st_mtime_ns]]
            for n, s in entries
        ]
    )


def write_archive(entries: list[tuple[str, Path | str]], path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with (
        lzma.open(tmp, "wb", preset=9 | lzma.PRESET_EXTREME) as packed,
        tarfile.open(fileobj=packed, mode="w") as tar,
    ):
        for name, source in entries:
            if isinstance(source, str):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, source
                tar.addfile(info)
            else:
                tar.add(source, arcname=name, recursive=False)
    tmp.replace(path)
    return path


def link_tree(entries: list[tuple[str, Path | str]], dest: Path) -> Path:
    """The archive's layout as symlinks (the CPU test serves from it without packing)."""
    for name, source in entries:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source if isinstance(source, str) else source.resolve())
    return dest


# -- the whole stage ------------------------------------------------------------------------
def stage(
    out: Path,
    *,
    with_runtime: bool = True,
    stubs: tuple[str, ...] = STUBS,
    spec: ModelSpec | None = None,
) -> carry.TravelSize:
    """Stage everything into ``out`` (``spec``: MiniLM's, loaded when not given)."""
    out.mkdir(parents=True, exist_ok=True)
    previous = carry.Stage(out).manifest()
    spec = spec or minilm.load()
    manifest: dict[str, object] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", **stage_model(spec, out)},
    }
    shutil.rmtree(out / carry.TRITON_REPOSITORY, ignore_errors=True)
    for kind in ("gpu", "cpu"):  # cpu: the test suite's rehearsal of the same path
        write_triton_configs(spec, out / carry.TRITON_REPOSITORY / kind, kind)
    archive = out / carry.RUNTIME_ARCHIVE
    if with_runtime:
        runtime = TritonRuntime((ROOT / StackSettings().runtime_dir).resolve())
        entries = runtime_entries(runtime, stubs)
        stamp = fingerprint(entries)
        if not archive.is_file() or previous.get("runtime_fingerprint") != stamp:
            print(f"packing {len(entries)} runtime files into {archive} (xz, minutes)...")
            write_archive(entries, archive)
        manifest["runtime_fingerprint"] = stamp
        manifest["runtime_files"] = [n for n, _ in entries]
    else:
        archive.unlink(missing_ok=True)
        manifest["runtime_skipped"] = "staged with --no-runtime"
    manifest["files"] = {
        str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": carry.sha256(p)}
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != carry.MANIFEST and not p.name.endswith(".tmp")
    }
    size = carry.travel_size(ROOT, [str(out.relative_to(ROOT)) if out.is_relative_to(ROOT)
                                    else str(out)])  # fmt: skip
    manifest["travel"] = size.as_dict()
    (out / carry.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / carry.STAGE_DIR)
    parser.add_argument("--no-runtime", action="store_true", help="skip Triton (model only)")
    parser.add_argument("--python", default=",".join(STUBS), help="stubs for these Pythons")
    args = parser.parse_args(argv)
    stubs = tuple(v.strip() for v in args.python.split(",") if v.strip())
    size = stage(args.out.absolute(), with_runtime=not args.no_runtime, stubs=stubs)
    print(f"staged {args.out}: {size.describe()}")
    return 0 if size.fits else 2


if __name__ == "__main__":
    sys.exit(main())
