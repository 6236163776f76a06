"""Errors of the local launcher.

DeployError
 ├── RuntimeMissingError   the Triton runtime environment, binary or backend stub is absent
 ├── TritonStartError      tritonserver died or did not become ready in time (carries its log tail)
 ├── StackStartError       `up`: a service of the stack did not start (nothing is left running)
 ├── StackConflictError    `up`: a stack runs with other settings (ports, repository, ...)
 ├── StackNotRunningError  `reload` found no running stack
 └── ModelLoadError        Triton refused to load a model, or there is no such exported model
"""


class DeployError(Exception):
    """Root of every error raised by ``deploy``."""


class RuntimeMissingError(DeployError):
    """A piece of the Triton runtime environment is missing; the message says how to get it."""


class TritonStartError(DeployError):
    """Triton exited during start-up or missed its readiness deadline."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(
            f"{message}\n--- tritonserver log (tail) ---\n{log_tail}" if log_tail else message
        )
        self.log_tail = log_tail


class StackStartError(DeployError):
    """``up`` failed: the supervisor stopped what had started; the message says which service
    failed and why (its log tail)."""


class StackNotRunningError(DeployError):
    """No running stack was found in the state directory."""


class StackConflictError(DeployError):
    """``up`` asked for settings (ports, repository, ...) other than the running stack's."""


class ModelLoadError(DeployError):
    """Triton's repository API refused to load a model (its reason), or the model is unknown."""
