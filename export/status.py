"""Status records returned by every export step (instead of raising through the pipeline)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Status(enum.StrEnum):
    OK = "OK"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


@dataclass
class StepResult:
    """What one step did: its status, why, the artefact it made and what it measured."""

    step: str
    status: Status
    reason: str = ""
    artefact: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status.value,
            "reason": self.reason,
            "artefact": str(self.artefact) if self.artefact else None,
            "metrics": self.metrics,
            "duration_s": round(self.duration_s, 3),
        }
