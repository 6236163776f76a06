"""A batch run: plan the shards, send their rows through Triton, write each shard whole.

One asyncio loop holds ``concurrency`` request slots busy: a producer reads shard after shard
(row groups, in a worker thread) and queues its batches; each slot sends the next batch (its
own shared-memory regions when Triton is local); when a shard's last batch is answered, its
part, dead letters and record are written (in a thread) while the slots go on with the next
shard. Any fatal error stops the run after the shards being written are on disk; rerunning
the same command resumes with the shards that have no record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa
import tritonclient.grpc.aio as grpcaio

from batch import check
from batch.entities import FeatureSource
from batch.errors import InputError, ModelError, TooManyRejected
from batch.inputs import (
    NUMPY_TYPES,
    Batch,
    Prepared,
    Signature,
    bind_columns,
    is_text,
    parse_columns,
    prepare,
)
from batch.inputs import batches as make_batches
from batch.manifest import (
    DEAD_LETTERS,
    PARTS,
    Manifest,
    RunStore,
    Shard,
    ShardRecord,
    plan_shards,
    worker_range,
)
from batch.output import ROW_INDEX, dead_letter_lines, parquet_bytes, part_table
from batch.sender import Outcome, Sender, fetch_signature, model_exists, open_client
from batch.settings import BatchSettings
from batch.shm import ShmSlot, open_slots
from batch.source import ParquetDataset, ParquetFileInfo
from export.naming import text_model_name

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class BatchJob:
    """What to score: ``input`` rows (or entity ids with ``features``) through ``model``."""

    model: str
    input: str
    output: str
    columns: list[str] | None = None
    keys: list[str] | None = None
    features: FeatureSource | None = None


class Progress(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def advance(self, rows: int) -> None: ...


class _Quiet:
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


@dataclass
class _Work:
    """A shard on its way: its rows, tensors, and the outcomes of its batches."""

    shard: Shard
    rows: pa.Table
    prepared: Prepared
    pending: int
    started: float
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass
class Plan:
    signature: Signature
    manifest: Manifest
    keys: list[str]
    columns: list[str]  # read from the input: keys + what feeds the model
    inputs: list[str]  # the columns that feed the model
    source: FeatureSource | None
    binding: dict[str, str]


def run(
    job: BatchJob, settings: BatchSettings, url: str, progress: Progress | None = None
) -> check.Summary:
    """Run (or resume) ``job`` against Triton's gRPC ``url``; the summary of the output."""
    return asyncio.run(_run(job, settings, url, progress or _Quiet()))


async def _run(
    job: BatchJob, settings: BatchSettings, url: str, progress: Progress
) -> check.Summary:
    began = time.perf_counter()
    dataset = ParquetDataset(job.input)
    files = await asyncio.to_thread(dataset.files)
    store = RunStore(job.output)
    client = open_client(url)
    slots: list[ShmSlot] = []
    try:
        plan = await _plan(client, url, job, settings, dataset, files, store)
        records = await asyncio.to_thread(store.records)
        mine = worker_range(len(plan.manifest.shards), settings.workers, settings.worker_index)
        todo = [plan.manifest.shards[i] for i in mine if i not in records]
        await asyncio.to_thread(store.clean_temporary, todo)
        before = sum(plan.manifest.shards[i].rows for i in mine if i in records)
        progress.start(sum(plan.manifest.shards[i].rows for i in mine), before)
        slots, shm_note = await _shared_memory(client, url, settings, plan.signature)
        sender = Sender(client, plan.signature, settings, slots)
        batch_size = min(settings.batch_size or plan.signature.max_batch_size,
                         plan.signature.max_batch_size)  # fmt: skip
        await _pipeline(todo, plan, dataset, store, sender, settings, batch_size, progress)
        return await asyncio.to_thread(
            check.summarize, store, plan.manifest, len(mine) - len(todo),
            check.RunFacts(
                seconds=time.perf_counter() - began, rows_run=sum(s.rows for s in todo),
                shards_run=len(todo), batch_size=batch_size, concurrency=settings.concurrency,
                shared_memory=shm_note, requests=sender.requests, retries=sender.retried,
                worker=(settings.worker_index, settings.workers),
            ),
        )  # fmt: skip
    finally:
        for slot in slots:
            await slot.close(client)
        await client.close()


async def _plan(
    client: grpcaio.InferenceServerClient,
    url: str,
    job: BatchJob,
    settings: BatchSettings,
    dataset: ParquetDataset,
    files: Sequence[ParquetFileInfo],
    store: RunStore,
) -> Plan:
    schemas = [dataset.schema(f.path) for f in files]
    schema = schemas[0]
    signature = await fetch_signature(client, url, job.model, settings.ready_timeout_s)
    binding: dict[str, str] = {}
    if job.features is not None:
        job.features.check(signature)
        for s in schemas:
            job.features.check_schema(s)
        inputs = [job.features.entity_column]
    else:
        wanted = [c for c, _ in parse_columns(job.columns) if c in schema.names]
        text = [c for c in wanted if is_text(schema.field(c).type)]
        if text and not any(t.datatype == "BYTES" for t in signature.inputs):
            pipeline = text_model_name(job.model)
            if not await model_exists(client, pipeline):
                raise InputError(
                    f"column(s) {text} hold text but {job.model!r} takes "
                    f"{[f'{t.name}:{t.datatype}' for t in signature.inputs]} and Triton serves "
                    f"no {pipeline!r} text pipeline (tritonstack export writes it)"
                )
            signature = await fetch_signature(client, url, pipeline, settings.ready_timeout_s)
        for s in schemas:
            binding = bind_columns(signature, s, job.columns)
        inputs = list(dict.fromkeys(binding.values()))
    # default keys: every column not fed to the model; an entity id is a key of its scores
    fed = [] if job.features is not None else inputs
    keys = list(job.keys) if job.keys is not None else [n for n in schema.names if n not in fed]
    for path, s in zip([f.path for f in files], schemas, strict=True):
        missing = [k for k in keys if k not in s.names]
        if missing:
            raise InputError(f"{path} lacks key column(s) {missing} (columns: {s.names})")
    taken = {ROW_INDEX, *keys}
    outputs = [o.name for o in signature.outputs]
    clash = taken & set(outputs)
    if clash:
        raise InputError(f"key column(s) {sorted(clash)} clash with model outputs: rename them")
    identity = {
        "input": [{"path": f.path, "size": f.size, "row_groups": list(f.row_groups)}
                  for f in files],
        "model": signature.model,
        "model_versions": dict(signature.versions),
        "binding": binding,
        "keys": keys,
        "outputs": outputs,
        "features": job.features.identity() if job.features else None,
    }  # fmt: skip
    planned = Manifest(identity, plan_shards(files, settings.shard_rows))
    manifest = await asyncio.to_thread(store.start, planned)
    return Plan(signature, manifest, keys, list(dict.fromkeys(keys + inputs)), inputs,
                job.features, binding)  # fmt: skip


async def _shared_memory(
    client: grpcaio.InferenceServerClient, url: str, settings: BatchSettings, signature: Signature
) -> tuple[list[ShmSlot], str]:
    """Slots with system shared memory when asked for (or ``auto`` and Triton on loopback)."""
    host = url.removeprefix("dns:///").rsplit(":", 1)[0]
    if settings.shared_memory == "none" or (
        settings.shared_memory == "auto" and host not in LOOPBACK
    ):
        return [], "none"
    slots: list[ShmSlot] = []
    try:
        slots = await open_slots(client, settings.concurrency, signature.outputs)
        await slots[0].prepare(client, {"probe": np.zeros((1, 1), np.uint8)}, {"probe": "UINT8"})
    except Exception as exc:  # registration refused (another host, no /dev/shm): fall back
        for slot in slots:
            await slot.close(client)
        if settings.shared_memory == "system":
            raise ModelError(f"system shared memory with Triton at {url} failed: {exc}") from exc
        return [], f"none (system shared memory refused: {exc})"
    return slots, "system"


async def _pipeline(
    todo: list[Shard],
    plan: Plan,
    dataset: ParquetDataset,
    store: RunStore,
    sender: Sender,
    settings: BatchSettings,
    batch_size: int,
    progress: Progress,
) -> None:
    queue: asyncio.Queue[tuple[_Work, Batch] | None] = asyncio.Queue(settings.concurrency * 2)
    writing: list[asyncio.Task[None]] = []

    def done(work: _Work) -> None:
        writing.append(asyncio.create_task(asyncio.to_thread(_finish, work, plan, store)))

    async def produce() -> None:
        for shard in todo:
            work, pieces = await asyncio.to_thread(
                _read, shard, plan, dataset, batch_size, settings.sort_by_length
            )
            progress.advance(len(work.prepared.rejected))
            if not pieces:
                done(work)
            for piece in pieces:
                await queue.put((work, piece))
        for _ in range(settings.concurrency):
            await queue.put(None)

    async def consume(slot: int) -> None:
        while (item := await queue.get()) is not None:
            work, piece = item
            outcome = await sender.send(piece, slot)
            work.outcomes.append(outcome)
            progress.advance(len(piece.positions))
            work.pending -= 1
            if work.pending == 0:
                _check_refusals(work, plan, settings, batch_size)  # a broken model stops it now
                done(work)

    tasks = [asyncio.create_task(produce())]
    tasks += [asyncio.create_task(consume(i)) for i in range(settings.concurrency)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # shards whose answers are all in are written even when the run stops
        results = await asyncio.gather(*writing, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _read(
    shard: Shard, plan: Plan, dataset: ParquetDataset, batch_size: int, by_length: bool
) -> tuple[_Work, list[Batch]]:
    started = time.perf_counter()
    rows = dataset.read(shard.file, shard.row_groups, plan.columns)
    if plan.source is not None:
        prepared = plan.source.prepare(rows)
    else:
        prepared = prepare(rows, plan.binding, plan.signature)
    pieces = make_batches(prepared, batch_size, by_length)
    return _Work(shard, rows, prepared, len(pieces), started), pieces


def _check_refusals(work: _Work, plan: Plan, settings: BatchSettings, batch_size: int) -> None:
    """Stop the run when Triton refused more of a shard's rows than it may (at least a
    request's worth): a model that refuses most rows is broken, not the data."""
    refusals = [r for o in work.outcomes for r in o.rejected]
    sent = len(work.prepared.valid)
    if len(refusals) >= batch_size and len(refusals) > settings.max_rejected_fraction * sent:
        raise TooManyRejected(
            f"Triton refused {len(refusals)} of the {sent} rows of shard {work.shard.index} sent "
            f"to {plan.signature.model!r} (first: {refusals[0].reason}); the shard is not "
            "recorded (BATCH_MAX_REJECTED_FRACTION sets the share)"
        )


def _finish(work: _Work, plan: Plan, store: RunStore) -> None:
    """Write the shard's dead letters, then its part, then its record (the commit)."""
    outcome = Outcome.merge(work.outcomes)
    rejected = list(work.prepared.rejected.values()) + outcome.rejected
    shard = work.shard
    dead_name = f"{DEAD_LETTERS}/{shard.name}.jsonl"
    if rejected:
        store.put(dead_name, dead_letter_lines(shard, work.rows, plan.keys, plan.inputs, rejected))
    else:
        store.remove(dead_name)  # from an earlier, killed attempt at this shard
    keys = work.rows.select(plan.keys)
    positions = outcome.positions if len(outcome.positions) else np.zeros(0, np.int64)
    outputs = outcome.outputs or {
        o.name: np.zeros((0, *(max(d, 0) for d in o.dims)), _dtype(o.datatype))
        for o in plan.signature.outputs
    }
    table = part_table(shard, keys, positions, outputs, plan.signature.outputs,
                       work.prepared.extra)  # fmt: skip
    part = store.put(f"{PARTS}/{shard.name}.parquet", parquet_bytes(table))
    versions = dict(plan.signature.versions)
    if outcome.version:
        versions[plan.signature.model] = outcome.version
    store.record(
        ShardRecord(
            shard=shard.index, rows_in=shard.rows, rows_out=table.num_rows,
            dead_letters=len(rejected), part=part,
            dead_letter_file=store.path(dead_name) if rejected else None,
            seconds=round(time.perf_counter() - work.started, 3), model_versions=versions,
        )
    )  # fmt: skip


def _dtype(datatype: str) -> type:
    return NUMPY_TYPES.get(datatype, np.float32)
