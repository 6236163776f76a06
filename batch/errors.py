"""Errors of batch scoring.

BatchError
 ├── InputError            the dataset cannot be read or does not fit the model (what to fix)
 ├── ModelError            Triton does not serve the model, or it has a signature we cannot feed
 ├── ResumeMismatchError   the output directory holds a run of other input, model or options
 ├── TritonUnavailable     Triton stayed unreachable / overloaded past the retries: run stopped,
 │                         finished shards are kept, a rerun resumes
 ├── TooManyRejected       Triton refused most of a shard's rows: the model, not the data, is
 │                         broken; the shard is not recorded
 └── CountMismatchError    rows in != rows out + dead letters at the end (must never happen)
"""

from __future__ import annotations


class BatchError(Exception):
    """Root of every error raised by ``batch``."""


class InputError(BatchError):
    """The input dataset is missing, unreadable, or lacks the columns the model needs."""


class ModelError(BatchError):
    """The model is not served, or its inputs cannot be built from columns."""


class ResumeMismatchError(BatchError):
    """The output directory belongs to a different run (input, model, options or versions)."""


class TritonUnavailable(BatchError):
    """Triton could not be reached (or kept refusing for overload) after every retry."""


class TooManyRejected(BatchError):
    """More of a shard's rows were refused by Triton than ``max_rejected_fraction`` allows."""


class CountMismatchError(BatchError):
    """The final check found rows in != rows out + dead letters."""
