"""Write a tuned serving configuration into the model repository.

The config search (``benchmarks.config_search``) only measures and returns its winner;
``tritonstack bench search --apply`` (the default) hands the winner here. The model's
``config.pbtxt`` is rebuilt from the protobuf with the tuned values, and those values are
recorded beside it in ``tuned_options.json`` with the measurements that chose them, so that a
later ``tritonstack export`` keeps writing the same config
(:func:`export.model_config.with_tuned`).
"""

from __future__ import annotations

from pathlib import Path

from export.model_config import ServingOptions, build_config, load_config, write_config, write_tuned
from export.spec import ModelSpec


def apply_tuned(repository: Path, spec: ModelSpec, options: ServingOptions, evidence: str) -> Path:
    """Rewrite ``spec``'s ``config.pbtxt`` in ``repository`` as ``options`` say and record the
    tuned values; returns the config's path. The current config must exist and parse (a
    broken one is refused before anything is written)."""
    path = repository / spec.name / "config.pbtxt"
    load_config(path)
    write_config(build_config(spec, options), path)
    write_tuned(path.parent, options, evidence)
    return path
