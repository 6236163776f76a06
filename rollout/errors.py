"""Errors of the rollout controller.

RolloutError
 ├── PlanError           the rollout cannot start as asked (no such version, nothing served, ...)
 ├── ConflictError       another rollout of the model is in progress, or another controller
 │                       drives it
 ├── TritonAdminError    Triton refused (or did not answer) a repository-API call
 └── StoreError          Redis could not be read or written
"""


class RolloutError(Exception):
    """Root of every error raised by ``rollout``."""


class PlanError(RolloutError):
    """The rollout cannot start as asked; the message says what to change."""


class ConflictError(RolloutError):
    """Another rollout of this model is in progress, or another controller drives it."""


class TritonAdminError(RolloutError):
    """Triton's repository API refused a load or unload, or did not answer in time."""


class StoreError(RolloutError):
    """Redis (the rollout state, the route table, the figures) could not be used."""
