"""Status records returned by every export step (instead of raising through the pipeline)."""

from __future__ import annotations

import enum
import json
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

    def write_report(self, path: Path | None = None) -> Path | None:
        """Write this record as JSON beside the artefact (``<artefact>.report.json``)."""
        path = path or (
            self.artefact.with_name(self.artefact.name + ".report.json") if self.artefact else None
        )
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")
        return path
