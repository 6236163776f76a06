"""Errors of the monitoring package.

MonitoringError
├── StoreError          a part cannot be written or read (fsspec / pyarrow)
├── ReferenceMissing    no usable reference for a model (build one first)
└── NotEnoughData       too few captured rows (or labelled rows) in the window
"""

from __future__ import annotations


class MonitoringError(Exception):
    """Root of the monitoring package's errors."""


class StoreError(MonitoringError):
    pass


class ReferenceMissing(MonitoringError):
    pass


class NotEnoughData(MonitoringError):
    pass
