"""Deployment: the local runtime launcher (``deploy.local``) and cluster manifests."""
