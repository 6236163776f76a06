"""Run the stack as local processes: Triton from the nvidia-pytriton wheel, later more."""

from deploy.local.errors import (
    DeployError,
    RuntimeMissingError,
    StackNotRunningError,
    TritonStartError,
)
from deploy.local.runtime import TritonRuntime
from deploy.local.triton import TritonPorts, TritonServer

__all__ = [
    "DeployError",
    "RuntimeMissingError",
    "StackNotRunningError",
    "TritonPorts",
    "TritonRuntime",
    "TritonServer",
    "TritonStartError",
]
