"""The gateway's APIs, one router each, and the error shape each answers with.

``ROUTERS`` is where a router's error shape is decided, once: the Open Inference Protocol
answers errors as ``tritonclient.http`` reads them, every other router as OpenAI does
(``gateway.errors``). The app registers them in this order, the busiest first.
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api import docs, health, openai, score, v2
from gateway.errors import Shape

ROUTERS: tuple[tuple[APIRouter, Shape], ...] = (
    (v2.router, Shape.v2),  # the inference routes first: routes are matched in order
    (openai.router, Shape.openai),
    (score.router, Shape.openai),
    (health.router, Shape.openai),
    (docs.router, Shape.openai),
)
