"""``tritonstack variants``: MiniLM's variants made, checked and timed (benchmarks/).

The work imports torch (seconds): deferred into the command on purpose, so that the CLI's
other commands start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deploy.local.settings import StackSettings
from tritonstack.console import console, fail


def variants(
    fp16_min_cosine: Annotated[float, typer.Option(help="fp16 budget")] = 0.999,
    int8_min_cosine: Annotated[float, typer.Option(help="every int8's cosine budget")] = 0.97,
    seconds: Annotated[float, typer.Option(help="timing per batch size")] = 2.0,
    save: Annotated[
        Path | None, typer.Option(help="directory for <date>-vm-variants.{json,md}")
    ] = None,
    threads: Annotated[
        int,
        typer.Option(min=0, help="ONNX Runtime threads (1: as the tuned config serves; 0: all)"),
    ] = 1,
) -> None:
    """Every variant of MiniLM (fp32, optimized, fp16, int8 blockwise / static / dynamic): parity
    with PyTorch, batch invariance, recall@10 against fp32, in-process speed."""
    from benchmarks.variants_report import run_variants

    build = StackSettings().home / "build" / "variants"
    ok = run_variants(
        console, build, fp16_min_cosine, int8_min_cosine, seconds, save, threads=threads
    )
    if not ok:
        raise fail(f"the fp32 export failed (see {build})")
