"""Peer serving stacks for the side-by-side benchmark (``benchmarks.compare``).

Each peer is a small server script (``python -m benchmarks.peers.NAME --port P``) that answers
``POST /embed`` with the JSON of :mod:`benchmarks.peers.common`; the optional packages they
import (Ray Serve, LitServe) come from the ``bench`` extra.
"""
