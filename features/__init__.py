"""The feature store: a Feast repository of driver statistics, online lookup, and training.

Import map (see features/README.md): ``schema``, ``settings``, ``errors`` and ``online`` are
what the gateway imports (no torch; ``feast`` only inside the SDK reader, lazily);
``store``, ``data`` and ``train`` are build-time (Feast, pandas; torch lazily in ``train``).
"""
