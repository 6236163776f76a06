"""Batch scoring through Triton: Parquet (or entity ids + Feast) in, Parquet out, resumable.

``run(BatchJob(...), BatchSettings(), url)`` plans shards of whole row groups, sends their rows
through the served model over gRPC with several requests in flight, writes each shard's part
and dead letters atomically, and checks rows in = rows out + dead letters at the end. See
``runner`` (the pipeline), ``manifest`` (the output layout and resume), ``inputs`` (columns to
tensors), ``sender`` (requests, retries, refusals), ``shm`` (shared memory), ``entities``
(point-in-time features), ``check`` (the final count and the summary).
"""

from batch.check import Summary
from batch.entities import FeatureSource
from batch.errors import (
    BatchError,
    CountMismatchError,
    InputError,
    ModelError,
    ResumeMismatchError,
    TooManyRejected,
    TritonUnavailable,
)
from batch.runner import BatchJob, Progress, run
from batch.settings import BatchSettings

__all__ = [
    "BatchError",
    "BatchJob",
    "BatchSettings",
    "CountMismatchError",
    "FeatureSource",
    "InputError",
    "ModelError",
    "Progress",
    "ResumeMismatchError",
    "Summary",
    "TooManyRejected",
    "TritonUnavailable",
    "run",
]
