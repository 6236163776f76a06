"""Offline checks of the deployment files (no cluster, no Docker engine, no network).

``python -m deploy.validate`` runs them all on ``deploy/``; the tests in ``tests/deploy`` run
the same functions, and also on broken copies to show that they fail.
"""
